"""The BASR dictation socket (``/ws/transcribe``): wire format, frame journal, stop store,
session registry and the connection that drives a session. Realtime connections are
admitted through the same registry.
"""
