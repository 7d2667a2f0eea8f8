"""One dictation utterance, whatever the wire: the speech gate (VAD and speaker filter), the
recognizer (stable prefix, partials, final) and the session that composes them.
"""
