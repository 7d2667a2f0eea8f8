// An in-memory dictation server for the client's recovery paths: the Dart
// twin of tests/client/fakes.py. It follows the contract's happy path
// (started/resumed with the contiguous ackSeq, one ack per frame, final +
// done on stop) and has knobs to misbehave the ways a real network and
// server do.
import 'dart:async';
import 'dart:convert';
import 'dart:typed_data';

import 'package:asr_client/asr_client.dart';

typedef Answer = List<Map<String, Object?>> Function(ScriptedServer server, Map<String, dynamic> stop);

/// What the real server answers when every claimed frame arrived.
List<Map<String, Object?>> coveredFinal(ScriptedServer server, Map<String, dynamic> stop) {
  final through = server.ackSeq + 1;
  return [
    {
      'type': 'final',
      'sessionId': stop['sessionId'],
      'stopId': stop['stopId'],
      'text': 'hello world',
      if (through >= (stop['finalCapturedSeq'] as int)) 'recognizedThroughSeq': through,
    },
    {'type': 'done', 'sessionId': stop['sessionId'], 'stopId': stop['stopId']},
  ];
}

/// One connection; the server pushes JSON into it, [drop] ends it.
class FakeLink implements Link {
  FakeLink(this.server);

  final ScriptedServer server;
  final StreamController<Object?> _inbox = StreamController<Object?>();
  bool closed = false;

  @override
  Stream<Object?> get messages => _inbox.stream;

  @override
  Future<void> send(Object message) async {
    await Future<void>.delayed(Duration.zero); // a real socket yields; the reader gets to run
    if (closed) {
      throw LinkClosed('link is closed');
    }
    server.receive(this, message);
  }

  @override
  Future<void> close() async => drop();

  void push(Map<String, Object?> message) {
    if (!closed) {
      _inbox.add(jsonEncode(message));
    }
  }

  void drop() {
    if (!closed) {
      closed = true;
      unawaited(_inbox.close());
    }
  }
}

class ScriptedServer {
  ScriptedServer({
    this.answer = coveredFinal,
    this.dropAtSeq,
    this.forgetOnResume = false,
    this.dropFirstStop = false,
    this.refuseAfter,
    this.refuseStart,
    this.refuseSocket,
    this.partials = const {},
  });

  final Answer answer;
  final int? dropAtSeq; // the first link dies as this frame arrives (it is lost)
  final bool forgetOnResume; // a resume finds no session (ackSeq -1)
  final bool dropFirstStop; // the link dies as the first stop arrives
  final int? refuseAfter; // connections after this many fail to open
  final Map<String, Object?>? refuseStart; // an error message answering the start
  final Map<String, Object?>? refuseSocket; // an error message, then the close, before any start
  final Map<int, Map<String, Object?>> partials; // seq → partial sent after that frame's ack
  final Map<int, Uint8List> frames = {};
  final List<(int, int)> arrivals = []; // (connection index, seq) of every frame
  final List<Map<String, dynamic>> openings = [];
  final List<Map<String, dynamic>> stops = [];
  final List<FakeLink> links = [];
  int attempts = 0;

  int get ackSeq {
    var seq = -1;
    while (frames.containsKey(seq + 1)) {
      seq++;
    }
    return seq;
  }

  Future<Link> connect(Uri url, String? apiKey) async {
    attempts++;
    final limit = refuseAfter;
    if (limit != null && links.length >= limit) {
      throw LinkClosed('connection refused');
    }
    final link = FakeLink(this);
    links.add(link);
    final refusal = refuseSocket;
    if (refusal != null) {
      // the key check: it speaks first and hangs up
      link.push(refusal);
      link.drop();
    }
    return link;
  }

  void receive(FakeLink link, Object message) {
    final index = links.indexOf(link);
    if (message is List<int>) {
      final frame = decodeFrame(Uint8List.fromList(message));
      if (index == 0 && frame.seq == dropAtSeq) {
        link.drop();
        return;
      }
      arrivals.add((index, frame.seq));
      frames.putIfAbsent(frame.seq, () => frame.payload);
      link.push({'type': 'ack', 'protocol': 1, 'sessionId': 's', 'ackSeq': ackSeq});
      final partial = partials[frame.seq];
      if (partial != null) {
        link.push(partial);
      }
      return;
    }
    final data = jsonDecode(message as String) as Map<String, dynamic>;
    switch (data['type']) {
      case 'start' || 'resume':
        _open(link, data);
      case 'stop':
        stops.add(data);
        if (dropFirstStop && stops.length == 1) {
          link.drop();
          return;
        }
        answer(this, data).forEach(link.push);
        link.drop();
    }
  }

  void _open(FakeLink link, Map<String, dynamic> data) {
    openings.add(data);
    final refusal = refuseStart;
    if (data['type'] == 'start' && refusal != null) {
      link.push(refusal);
      link.drop();
      return;
    }
    if (data['type'] == 'start' || forgetOnResume) {
      frames.clear();
    }
    link.push({
      'type': data['type'] == 'start' ? 'started' : 'resumed',
      'protocol': 1,
      'sessionId': data['sessionId'],
      'ackSeq': ackSeq,
      'control': 2,
    });
  }
}
