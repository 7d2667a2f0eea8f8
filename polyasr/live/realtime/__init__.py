"""OpenAI Realtime transcription on ``/v1/realtime``: input audio formats, client and server
events, and the connection, each turn a dictation session.
"""
