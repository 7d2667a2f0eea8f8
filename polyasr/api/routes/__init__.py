"""One router per API family: OpenAI-compatible transcription, alignment, the dictation
sockets, and operations (health, unload, metrics, the page).
"""
