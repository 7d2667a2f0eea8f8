"""The two live WebSocket protocols over the dictation layer: ``basr`` (``/ws/transcribe``)
and ``realtime`` (OpenAI Realtime on ``/v1/realtime``), with the socket plumbing and the
refusals they share in this folder.
"""
