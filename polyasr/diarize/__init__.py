"""Who spoke when: speech regions, voice embeddings over sliding windows, clustering, known
speakers, and transcripts and alignments split at speaker turns."""
