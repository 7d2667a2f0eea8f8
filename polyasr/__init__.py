"""polyasr: a self-hosted Qwen3-ASR service with one contract on two backends.

The sub-packages are the layers, lowest first: ``core`` (settings, constants, the engine
seam, languages, text, weights), ``audio`` (decoding uploads, voice activity, speaker
embeddings), ``archive`` (what clients sent, on disk), ``models`` (model units, their
scheduler, the manager, the transcriber, health), ``dictation`` (speech gate,
recognizer, session), ``align`` (the forced-alignment pipeline), ``diarize`` (who spoke
when, and the transcript by speaker), ``live`` (the two WebSocket protocols), ``api``
(the FastAPI app and its routers) and ``engines`` (MLX and CUDA, which only the entry
points pick). A module imports from its own layer or a lower one;
``docs/architecture.md`` draws the picture.
"""
