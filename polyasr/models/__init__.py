"""Model residency and decoding: one unit per model (``asr``, ``align``) with its own
scheduler thread and idle clock, the manager's residency policy over them, the
transcriber every decode goes through, and the health monitor.
"""
