/// Which frames of a session the server has, and which it may still need.
///
/// Every payload is kept for the whole utterance, not only until it is
/// acked: the batch fallback uploads all of it, and a resume can land on a
/// server that lost the session (`ackSeq` -1), which then needs every frame
/// again.
library;

import 'dart:math' as math;
import 'dart:typed_data';

/// Frames numbered from 0 in capture order, and the server's ack frontier.
class FrameLedger {
  final List<Uint8List> _payloads = [];
  int _acked = -1;

  /// The seq the next frame gets, which is also the exclusive count of
  /// captured frames (`finalCapturedSeq`).
  int get nextSeq => _payloads.length;

  /// Highest seq with every frame `0..seq` acknowledged (inclusive), or -1.
  int get acked => _acked;

  /// Records a captured payload; returns its seq.
  int add(List<int> pcm) {
    _payloads.add(Uint8List.fromList(pcm));
    return _payloads.length - 1;
  }

  Uint8List payload(int seq) => _payloads[seq];

  /// An `ack` on the live connection. Acks from a connection that is being
  /// replaced may still trickle in, so the frontier never moves back.
  void ack(int ackSeq) {
    _acked = math.max(_acked, math.min(ackSeq, nextSeq - 1));
  }

  /// A `resumed` reply is authoritative, even below what was acked before:
  /// a server that lost the session must get everything again.
  void rewind(int serverAckSeq) {
    _acked = math.max(-1, math.min(serverAckSeq, nextSeq - 1));
  }

  /// Seqs the server has not acknowledged, in order: what a resume resends.
  List<int> unacked() => [for (var seq = _acked + 1; seq < nextSeq; seq++) seq];

  /// The whole utterance as one PCM16LE buffer, for the batch fallback.
  Uint8List pcm() {
    final all = BytesBuilder(copy: false);
    for (final payload in _payloads) {
      all.add(payload);
    }
    return all.takeBytes();
  }
}
