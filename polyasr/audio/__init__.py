"""Audio in: uploads decoded to 16 kHz mono float32 and cut at quiet points, Silero voice
activity and Resemblyzer speaker embeddings.
"""
