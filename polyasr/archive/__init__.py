"""What clients sent, kept on disk under the log folder: uploads, one folder per dictation
connection, crash recovery and retention.
"""
