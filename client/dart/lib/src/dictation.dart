/// One utterance over `WS /ws/transcribe` (control protocol v2), recovered
/// across dropped connections, with a proof that the final heard all of it.
///
/// Every captured frame stays in a [FrameLedger]. When the socket drops, the
/// dictation reconnects, sends `resume` for the same session, resends the
/// frames after the server's `ackSeq` and, if it had already stopped, the
/// same `stop` again (same `stopId`, so the server finalizes once). A final
/// counts only if `recognizedThroughSeq` reaches `finalCapturedSeq`;
/// otherwise, and on `stopExpired` or no final at all, the whole utterance
/// goes to `POST /v1/audio/transcriptions` and the result says it came from
/// there.
library;

import 'dart:async';
import 'dart:convert';
import 'dart:math' as math;
import 'dart:typed_data';

import 'errors.dart';
import 'framing.dart';
import 'http_api.dart';
import 'ledger.dart';
import 'link.dart';
import 'messages.dart';
import 'partials.dart';
import 'results.dart';
import 'wav.dart';

/// `(text, delta)`: append [delta] to what is shown, or show [text] instead
/// when [delta] is null (the hypothesis was rewritten).
typedef PartialCallback = void Function(String text, String? delta);

enum DictationSource { stream, batch }

/// The utterance's text and where it came from.
///
/// [source] is [DictationSource.stream] when the socket's final proved
/// coverage, and [DictationSource.batch] when the text is the batch
/// endpoint's for the buffered audio; [fallbackReason] then says why
/// (`uncovered`, `stop_expired:<reason>`, `no_final`) and [streamText] keeps
/// the unproven final, if any.
///
/// With `words: true`, a stream result carries the final's [words] (times in
/// seconds from the first frame), or [wordsReason] says why there are none
/// (e.g. `language_not_aligned`); a batch result carries neither. [confidence]
/// (asked with `Dictation(confidence: true)`) is each word of a stream text
/// with the model's confidence in it; null otherwise.
class DictationResult {
  const DictationResult(
    this.text,
    this.source,
    this.finalCapturedSeq,
    this.recognizedThroughSeq,
    this.streamText,
    this.fallbackReason, [
    this.words,
    this.wordsReason,
    this.confidence,
  ]);

  final String text;
  final DictationSource source;
  final int finalCapturedSeq;
  final int? recognizedThroughSeq;
  final String? streamText;
  final String? fallbackReason;
  final List<Word>? words;
  final String? wordsReason;
  final List<WordConfidence>? confidence;
}

/// What recovery cost, for logs and tests.
class DictationStats {
  int connections = 0;
  int reconnects = 0;
  int framesSent = 0;
  int resentFrames = 0;
}

enum _State { fresh, streaming, stopping, ended }

/// [start], [sendAudio] per captured chunk, then [stop].
class Dictation {
  Dictation({
    this.url = defaultUrl,
    String? sessionId,
    this.apiKey,
    this.language,
    this.context,
    this.words = false,
    this.confidence = false,
    PartialCallback? onPartial,
    PolyAsrClient? http,
    Connector connect = connectWebsocket,
    Duration finalTimeout = const Duration(seconds: 15),
    Duration openTimeout = const Duration(seconds: 10),
    int maxReconnects = 5,
    Duration reconnectDelay = const Duration(milliseconds: 200),
  })  : sessionId = sessionId ?? _randomId(),
        _wsUrl = websocketUrl(url),
        _onPartial = onPartial,
        _http = http,
        _connect = connect,
        _finalTimeout = finalTimeout,
        _openTimeout = openTimeout,
        _maxReconnects = maxReconnects,
        _reconnectDelay = reconnectDelay;

  final String url;
  final String sessionId;

  /// The server's `POLYASR_API_KEY` (socket subprotocol, batch fallback header).
  final String? apiKey;
  final String? language;
  final String? context;

  /// Ask for the final's words, timed by the server's forced aligner.
  final bool words;

  /// Ask for each final word's probability ([DictationResult.confidence]).
  final bool confidence;
  final FrameLedger ledger = FrameLedger();
  final PartialText partial = PartialText();
  final DictationStats stats = DictationStats();

  final Uri _wsUrl;
  final PartialCallback? _onPartial;
  final PolyAsrClient? _http;
  final Connector _connect;
  final Duration _finalTimeout;
  final Duration _openTimeout;
  final int _maxReconnects;
  final Duration _reconnectDelay;

  _State _state = _State.fresh;
  Link? _link;
  int _generation = 0; // one per connection; events of older ones are ignored
  int _lostGeneration = 0;
  Map<String, Object>? _stop;
  Map<String, dynamic>? _answer; // the final or stopExpired
  Map<String, dynamic>? _words; // the final's words message, when asked for
  PolyAsrError? _failure;
  final Completer<void> _settled = Completer<void>();
  bool _recovering = false;
  final List<StreamSubscription<Object?>> _subscriptions = [];

  String get stopId => '$sessionId-stop';

  // -- public ---------------------------------------------------------------

  /// Connects and opens the session; throws the typed error the server
  /// answers with (e.g. [UnsupportedLanguage]).
  Future<void> start() async {
    if (_state != _State.fresh) {
      throw StateError('a Dictation is started once');
    }
    _state = _State.streaming;
    try {
      await _open('start');
    } on LinkClosed catch (error) {
      _state = _State.ended;
      throw ConnectionLost('cannot open a dictation at $_wsUrl: ${error.message}');
    } catch (_) {
      _state = _State.ended;
      rethrow;
    }
  }

  /// Captures one frame of 16 kHz mono PCM16LE and sends it if connected;
  /// returns its seq. While the socket is down the frame is only kept, and
  /// sent by the resume.
  Future<int> sendAudio(List<int> pcm) async {
    final failure = _failure;
    if (failure != null) {
      throw failure;
    }
    if (_state != _State.streaming) {
      throw StateError('sendAudio() needs a started dictation that is not stopped');
    }
    final seq = ledger.add(pcm);
    final link = _link;
    final generation = _generation;
    if (link != null) {
      try {
        await link.send(encodeFrame(seq, pcm));
        stats.framesSent++;
      } on LinkClosed {
        _linkLost(generation);
      }
    }
    return seq;
  }

  /// Claims every captured frame, waits for the final and checks its
  /// coverage; recovers through the batch endpoint when it is not proven.
  Future<DictationResult> stop() async {
    if (_state != _State.streaming) {
      throw StateError('stop() needs a started dictation that is not stopped');
    }
    _state = _State.stopping;
    final captured = ledger.nextSeq;
    final stop = stopMessage(sessionId, stopId, captured);
    _stop = stop;
    final link = _link;
    final generation = _generation;
    if (link != null && _failure == null) {
      try {
        await link.send(jsonEncode(stop));
      } on LinkClosed {
        _linkLost(generation);
      }
    }
    try {
      await _settled.future.timeout(_finalTimeout);
    } on TimeoutException {
      // no final in time: the batch fallback below decides
    } finally {
      await _shutdown();
    }
    final failure = _failure;
    if (failure != null) {
      throw failure;
    }
    return _result(captured);
  }

  /// Drops the utterance without a stop (the server keeps the session for
  /// its resume TTL, then forgets it).
  Future<void> abort() => _shutdown();

  // -- connection -----------------------------------------------------------

  Future<void> _open(String kind) async {
    final link = await _connect(_wsUrl, apiKey);
    if (_state == _State.ended) {
      unawaited(link.close());
      throw LinkClosed('the dictation has ended');
    }
    final generation = ++_generation;
    final opened = Completer<Map<String, dynamic>>();
    opened.future.ignore(); // an error nobody awaits any more (send failed first) is not uncaught
    var live = false; // the reply was accepted: from now on an ending link is a loss to recover
    var ended = false;
    // one listener for the link's life: the reply, then acks, partials, the final
    final subscription = link.messages.listen(
      (raw) {
        if (raw is! String) {
          return;
        }
        final Map<String, dynamic> message;
        try {
          message = _decode(raw);
        } on PolyAsrError catch (error) {
          if (opened.isCompleted) {
            _fail(error);
          } else {
            opened.completeError(error);
          }
          return;
        }
        if (!opened.isCompleted) {
          opened.complete(message);
        } else if (message['code'] == 'server_shutting_down') {
          _linkLost(generation); // a restart: resume after it, as after a drop
        } else if (!_settled.isCompleted) {
          _dispatch(message);
        }
      },
      onDone: () {
        ended = true;
        if (!opened.isCompleted) {
          opened.completeError(LinkClosed('closed before the reply to $kind'));
        } else if (live) {
          _linkLost(generation);
        }
      },
    );
    _subscriptions.add(subscription);
    try {
      final opening = openingMessage(
        kind,
        sessionId,
        language: language,
        context: context,
        words: words,
        confidence: confidence,
      );
      try {
        await link.send(jsonEncode(opening));
      } on LinkClosed {
        // A server that refuses the socket (no key) says why and closes at
        // once: the send may fail, and the reason is then the reply.
      }
      final reply = await opened.future.timeout(
        _openTimeout,
        onTimeout: () => throw LinkClosed('no reply to $kind within $_openTimeout'),
      );
      if (reply['type'] == 'error') {
        throw errorFromMessage(reply);
      }
      final expected = kind == 'start' ? 'started' : 'resumed';
      if (reply['type'] != expected) {
        throw PolyAsrError("expected '$expected', got '${reply['type']}'");
      }
      stats.connections++;
      live = true;
      if (ended) {
        _linkLost(generation);
      }
      if (kind == 'resume') {
        ledger.rewind((reply['ackSeq'] as num?)?.toInt() ?? -1);
        await _replay(link);
      }
    } catch (_) {
      unawaited(subscription.cancel());
      unawaited(link.close());
      rethrow;
    }
    if (_state == _State.ended) {
      // the dictation ended while this resume was under way
      unawaited(subscription.cancel());
      unawaited(link.close());
      throw LinkClosed('the dictation has ended');
    }
    // no await since _replay's last check: a frame captured from here on
    // sees this link and sends itself
    _link = link;
  }

  /// Resends what the server lacks, then the stop if one was asked for.
  /// Loops on `nextSeq` so frames captured meanwhile are included.
  Future<void> _replay(Link link) async {
    var seq = ledger.acked + 1;
    while (seq < ledger.nextSeq) {
      await link.send(encodeFrame(seq, ledger.payload(seq)));
      stats.resentFrames++;
      seq++;
    }
    final stop = _stop;
    if (stop != null) {
      await link.send(jsonEncode(stop));
    }
  }

  void _dispatch(Map<String, dynamic> message) {
    switch (message['type']) {
      case 'ack':
        ledger.ack((message['ackSeq'] as num?)?.toInt() ?? -1);
      case 'partial':
        final delta = partial.apply(message);
        _onPartial?.call(partial.text, delta);
      case 'final' || 'stopExpired':
        _answer = message;
        if (message['type'] == 'stopExpired' || !words) {
          _settle(); // with words, the answer is complete at their message
        }
      case 'words':
        _words = message;
        _settle();
      case 'done' when _answer != null:
        _settle();
      case 'error':
        _fail(errorFromMessage(message));
    }
  }

  /// A socket ended before the answer: recover unless that socket was
  /// already replaced, or a recovery is under way (it retries by itself).
  void _linkLost(int generation) {
    if (generation != _generation || _settled.isCompleted || _state == _State.ended) {
      return;
    }
    _lostGeneration = generation;
    final dead = _link;
    _link = null;
    if (dead != null) {
      unawaited(dead.close());
    }
    if (!_recovering) {
      _recovering = true;
      unawaited(_recover());
    }
  }

  Future<void> _recover() async {
    try {
      for (var attempt = 0; attempt < _maxReconnects; attempt++) {
        if (attempt > 0) {
          await Future<void>.delayed(_reconnectDelay * math.pow(2, attempt - 1));
        }
        if (_state == _State.ended) {
          return;
        }
        try {
          await _open('resume');
        } on LinkClosed {
          continue;
        } on ServerShuttingDown {
          continue; // still going down: try again after the delay
        } on PolyAsrError catch (error) {
          _fail(error);
          return;
        }
        if (_lostGeneration != _generation) {
          stats.reconnects++;
          return;
        }
        final dead = _link; // it died while resending
        _link = null;
        if (dead != null) {
          unawaited(dead.close());
        }
      }
      _fail(ConnectionLost('dictation $sessionId: no connection after $_maxReconnects tries'));
    } finally {
      // synchronous with the last check above: a loss reported after this
      // starts a new recovery
      _recovering = false;
    }
  }

  void _fail(PolyAsrError error) {
    _failure ??= error;
    _settle();
  }

  void _settle() {
    if (!_settled.isCompleted) {
      _settled.complete();
    }
  }

  Future<void> _shutdown() async {
    _state = _State.ended;
    _settle();
    for (final subscription in _subscriptions) {
      unawaited(subscription.cancel());
    }
    _subscriptions.clear();
    final link = _link;
    _link = null;
    if (link != null) {
      try {
        await link.close().timeout(const Duration(seconds: 2));
      } on Object {
        // closing is best effort: the answer (or its absence) is already known
      }
    }
  }

  // -- result ---------------------------------------------------------------

  Future<DictationResult> _result(int captured) async {
    final answer = _answer ?? const <String, dynamic>{};
    final through = answer['recognizedThroughSeq'];
    final recognized = through is int ? through : null;
    final streamText = answer['type'] == 'final' ? (answer['text'] ?? '').toString() : null;
    if (streamText != null && (covers(answer, captured) || captured == 0)) {
      final (timed, why) = _wordsOf(_words);
      final scored = answer['confidence'] as List<dynamic>?;
      final confidence = scored == null
          ? null
          : [for (final word in scored) WordConfidence.fromJson(word as Map<String, dynamic>)];
      return DictationResult(
          streamText, DictationSource.stream, captured, recognized, streamText, null, timed, why, confidence);
    }
    final String reason;
    if (answer['type'] == 'final') {
      reason = 'uncovered';
    } else if (answer['type'] == 'stopExpired') {
      reason = 'stop_expired:${answer['reason']}';
    } else {
      reason = 'no_final';
    }
    final text = captured > 0 ? await _batch() : '';
    return DictationResult(text, DictationSource.batch, captured, recognized, streamText, reason);
  }

  /// `(words, reason)` from the `words` message (neither without one).
  static (List<Word>?, String?) _wordsOf(Map<String, dynamic>? message) {
    if (message == null) {
      return (null, null);
    }
    final words = message['words'];
    if (words is! List) {
      return (null, message['reason']?.toString());
    }
    return ([for (final w in words) Word.fromJson(w as Map<String, dynamic>)], null);
  }

  /// The buffered utterance through `POST /v1/audio/transcriptions`.
  Future<String> _batch() async {
    final wav = wavFromPcm16(ledger.pcm());
    final client = _http ?? PolyAsrClient(baseUrl: url, apiKey: apiKey);
    try {
      final result = await client.transcribe(
        AudioUpload.bytes(wav, filename: '$sessionId.wav'),
        language: language,
        context: context,
      );
      return result.text;
    } finally {
      if (_http == null) {
        client.close();
      }
    }
  }
}

/// A server message; the server sends JSON objects only.
Map<String, dynamic> _decode(String message) {
  Object? data;
  try {
    data = jsonDecode(message);
  } on FormatException {
    data = null;
  }
  if (data is! Map<String, dynamic>) {
    final head = message.length > 80 ? message.substring(0, 80) : message;
    throw PolyAsrError('the server sent something that is not a JSON object: $head');
  }
  return data;
}

String _randomId() {
  final random = math.Random.secure();
  return [for (var i = 0; i < 16; i++) random.nextInt(256).toRadixString(16).padLeft(2, '0')].join();
}

/// Sends [pcm] as frames, each once it would have been captured at [pace] x
/// real time (`0` sends as fast as the socket takes them).
Future<void> streamPcm(
  Dictation dictation,
  Uint8List pcm, {
  int bytesPerFrame = frameBytes,
  double pace = 1.0,
}) async {
  final clock = Stopwatch()..start();
  for (var offset = 0; offset < pcm.length; offset += bytesPerFrame) {
    final end = math.min(offset + bytesPerFrame, pcm.length);
    if (pace > 0) {
      final due = (end / bytesPerSecond / pace * 1e6).round();
      final wait = due - clock.elapsedMicroseconds;
      if (wait > 0) {
        await Future<void>.delayed(Duration(microseconds: wait));
      }
    }
    await dictation.sendAudio(Uint8List.sublistView(pcm, offset, end));
  }
}
