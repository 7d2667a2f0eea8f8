// Mirror of tests/client/test_scripted.py: a Dictation against the scripted
// in-memory server of fakes.dart, through the recovery paths a real server
// only shows under a broken network. Same test names, underscores as spaces.
import 'dart:convert';
import 'dart:typed_data';

import 'package:asr_client/asr_client.dart';
import 'package:http/http.dart' as http;
import 'package:http/testing.dart';
import 'package:test/test.dart';

import 'fakes.dart';

// 100 ms each, distinguishable
final List<Uint8List> frames = [
  for (var seq = 0; seq < 20; seq++) Uint8List.fromList([for (var i = 0; i < 1600; i++) ...[seq, 0]]),
];

Uint8List allPcm([List<Uint8List>? chunks]) =>
    Uint8List.fromList([for (final chunk in chunks ?? frames) ...chunk]);

/// The batch endpoint behind the fallback: records uploads, answers [text].
class Batch {
  Batch([this.text = 'from the batch endpoint']);

  final String text;
  final List<http.Request> uploads = [];

  PolyAsrClient client() => PolyAsrClient(
        baseUrl: 'http://asr.test',
        httpClient: MockClient((request) async {
          expect(request.url.path, '/v1/audio/transcriptions');
          uploads.add(request);
          return http.Response(jsonEncode({'text': text}), 200, headers: {'content-type': 'application/json'});
        }),
      );

  /// The PCM of the single WAV that was uploaded.
  Uint8List uploadedPcm() {
    final body = uploads.single.bodyBytes;
    final riff = latin1.decode(body).indexOf('RIFF');
    final size = ByteData.sublistView(body).getUint32(riff + 40, Endian.little);
    return Uint8List.sublistView(body, riff + 44, riff + 44 + size);
  }
}

Dictation dictation(
  ScriptedServer server, {
  Batch? batch,
  PartialCallback? onPartial,
  Duration finalTimeout = const Duration(seconds: 15),
  int maxReconnects = 5,
  bool words = false,
  bool confidence = false,
}) =>
    Dictation(
      url: 'http://asr.test',
      sessionId: 's',
      language: 'en',
      connect: server.connect,
      http: (batch ?? Batch()).client(),
      onPartial: onPartial,
      confidence: confidence,
      finalTimeout: finalTimeout,
      maxReconnects: maxReconnects,
      words: words,
      reconnectDelay: const Duration(milliseconds: 10),
    );

Future<DictationResult> run(Dictation d, [List<Uint8List>? chunks]) async {
  await d.start();
  for (final frame in chunks ?? frames) {
    await d.sendAudio(frame);
  }
  return d.stop();
}

List<int> seqsOn(ScriptedServer server, int connection) =>
    [for (final (conn, seq) in server.arrivals) if (conn == connection) seq];

List<Uint8List?> received(ScriptedServer server) => [for (var seq = 0; seq < 20; seq++) server.frames[seq]];

List<int> range(int start, int end) => [for (var i = start; i < end; i++) i];

List<Map<String, Object?>> guess(ScriptedServer server, Map<String, dynamic> stop) => [
      {'type': 'final', 'sessionId': 's', 'stopId': stop['stopId'], 'text': 'a guess'},
      {'type': 'done', 'sessionId': 's', 'stopId': stop['stopId']},
    ];

void main() {
  test('frames are framed acked and claimed by the stop', () async {
    final server = ScriptedServer();
    final d = dictation(server);
    final result = await run(d);
    expect(server.arrivals, [for (var seq = 0; seq < 20; seq++) (0, seq)]);
    expect(received(server), frames);
    expect(d.ledger.acked, 19);
    expect(server.openings.first['type'], 'start');
    expect(server.openings.first['control'], 2);
    expect(server.stops, [
      {'type': 'stop', 'protocol': 1, 'sessionId': 's', 'stopId': 's-stop', 'finalCapturedSeq': 20},
    ]);
    expect((result.text, result.source, result.fallbackReason), ('hello world', DictationSource.stream, null));
    expect((result.recognizedThroughSeq, result.finalCapturedSeq), (20, 20));
  });

  test('a final with confidence gives each word its probability', () async {
    List<Map<String, Object?>> scored(ScriptedServer server, Map<String, dynamic> stop) {
      final answer = coveredFinal(server, stop);
      return [
        {
          ...answer.first,
          'confidence': [
            {'text': 'hello', 'probability': 0.9},
            {'text': 'world', 'probability': null},
          ],
        },
        answer.last,
      ];
    }

    final server = ScriptedServer(answer: scored);
    final result = await run(dictation(server, confidence: true));
    expect(server.openings.first['confidence'], isTrue);
    expect([for (final w in result.confidence!) (w.text, w.probability)], [('hello', 0.9), ('world', null)]);
    final plain = await run(dictation(ScriptedServer()));
    expect(plain.confidence, isNull);
  });

  test('partials reach the callback with their delta', () async {
    final server = ScriptedServer(partials: {
      2: {'type': 'partial', 'sessionId': 's', 'partial': 'hel', 'delta': 'hel'},
      4: {'type': 'partial', 'sessionId': 's', 'partial': 'hello', 'delta': 'lo'},
      6: {'type': 'partial', 'sessionId': 's', 'partial': 'help'},
    });
    final seen = <(String, String?)>[];
    final d = dictation(server, onPartial: (text, delta) => seen.add((text, delta)));
    await run(d);
    expect(seen, [('hel', 'hel'), ('hello', 'lo'), ('help', null)]);
    expect(d.partial.text, 'help');
  });

  test('a drop resumes and resends the unacked frames', () async {
    final server = ScriptedServer(dropAtSeq: 8);
    final d = dictation(server);
    final result = await run(d);
    expect([for (final o in server.openings) o['type']], ['start', 'resume']);
    expect(server.openings[1]['sessionId'], 's');
    expect(server.openings[1]['language'], 'en');
    expect(seqsOn(server, 0), range(0, 8));
    expect(seqsOn(server, 1), range(8, 20)); // nothing twice
    expect(received(server), frames);
    expect((d.stats.reconnects, d.stats.connections), (1, 2));
    expect(d.stats.resentFrames, greaterThanOrEqualTo(1));
    expect((result.source, result.recognizedThroughSeq), (DictationSource.stream, 20));
  });

  test('resuming a lost session resends everything', () async {
    final server = ScriptedServer(dropAtSeq: 8, forgetOnResume: true);
    final result = await run(dictation(server));
    expect(seqsOn(server, 1), range(0, 20));
    expect(received(server), frames);
    expect((result.source, result.recognizedThroughSeq), (DictationSource.stream, 20));
  });

  test('the stop is reissued with the same stop id after a drop', () async {
    final server = ScriptedServer(dropFirstStop: true);
    final result = await run(dictation(server));
    expect(server.stops, hasLength(2));
    expect(server.stops[0], server.stops[1]);
    expect((server.stops[1]['stopId'], server.stops[1]['finalCapturedSeq']), ('s-stop', 20));
    expect([for (final o in server.openings) o['type']], ['start', 'resume']);
    expect((result.source, result.text), (DictationSource.stream, 'hello world'));
  });

  test('an uncovered final falls back to the batch endpoint', () async {
    final batch = Batch();
    final result = await run(dictation(ScriptedServer(answer: guess), batch: batch));
    expect((result.text, result.source, result.fallbackReason),
        ('from the batch endpoint', DictationSource.batch, 'uncovered'));
    expect((result.streamText, result.recognizedThroughSeq), ('a guess', null));
    expect(batch.uploadedPcm(), allPcm()); // the whole utterance, not just the unacked part
  });

  test('stop expired falls back to the batch endpoint', () async {
    List<Map<String, Object?>> expired(ScriptedServer server, Map<String, dynamic> stop) => [
          {'type': 'stopExpired', 'sessionId': 's', 'stopId': stop['stopId'], 'reason': 'session_not_held'},
        ];
    final batch = Batch();
    final result = await run(dictation(ScriptedServer(answer: expired), batch: batch));
    expect((result.source, result.fallbackReason), (DictationSource.batch, 'stop_expired:session_not_held'));
    expect((result.text, result.streamText), ('from the batch endpoint', null));
    expect(batch.uploadedPcm(), allPcm());
  });

  test('no final in time falls back to the batch endpoint', () async {
    final batch = Batch();
    final server = ScriptedServer(answer: (s, m) => []);
    final result = await run(dictation(server, batch: batch, finalTimeout: const Duration(milliseconds: 300)));
    expect((result.source, result.fallbackReason), (DictationSource.batch, 'no_final'));
    expect(batch.uploadedPcm(), allPcm());
  });

  test('a server error raises its typed error without fallback', () async {
    List<Map<String, Object?>> unavailable(ScriptedServer server, Map<String, dynamic> stop) => [
          {'type': 'error', 'code': 'model_unavailable', 'error': 'weights missing'},
        ];
    final batch = Batch();
    await expectLater(
      run(dictation(ScriptedServer(answer: unavailable), batch: batch)),
      throwsA(isA<ModelUnavailable>().having((e) => e.message, 'message', 'weights missing')),
    );
    expect(batch.uploads, isEmpty);
  });

  test('a server shutting down is resumed like a drop', () async {
    List<Map<String, Object?>> restarting(ScriptedServer server, Map<String, dynamic> stop) =>
        server.stops.length == 1 // the drain's grace ended before this stop was answered
            ? [
                {'type': 'error', 'code': 'server_shutting_down', 'error': 'restarting'},
              ]
            : coveredFinal(server, stop);
    final server = ScriptedServer(answer: restarting);
    final result = await run(dictation(server));
    expect([for (final o in server.openings) o['type']], ['start', 'resume']);
    expect(server.stops, hasLength(2));
    expect(server.stops[0], server.stops[1]);
    expect((result.text, result.source), ('hello world', DictationSource.stream));
  });

  test('a refused start raises its typed error', () async {
    final refusal = {'type': 'error', 'code': 'unsupported_language', 'error': "unsupported language 'klingon'"};
    final d = dictation(ScriptedServer(refuseStart: refusal));
    await expectLater(
      d.start(),
      throwsA(isA<UnsupportedLanguage>().having((e) => e.message, 'message', contains('klingon'))),
    );
    await expectLater(d.sendAudio(frames.first), throwsStateError);
  });

  test('a socket refused before the start raises its typed error', () async {
    final refusal = {'type': 'error', 'code': 'unauthorized', 'error': 'a valid API key is required'};
    final server = ScriptedServer(refuseSocket: refusal);
    await expectLater(
      dictation(server).start(),
      throwsA(isA<Unauthorized>().having((e) => e.message, 'message', contains('apiKey'))),
    );
    expect(server.openings, isEmpty); // the start never reached it: the reason came first
  });

  test('reconnecting gives up with connection lost', () async {
    final server = ScriptedServer(dropAtSeq: 5, refuseAfter: 1);
    await expectLater(run(dictation(server, maxReconnects: 3)), throwsA(isA<ConnectionLost>()));
    expect(server.attempts, 1 + 3);
  });

  test('frames captured while disconnected are sent by the resume', () async {
    final server = ScriptedServer();
    final d = dictation(server);
    await d.start();
    for (final frame in frames.take(4)) {
      await d.sendAudio(frame);
    }
    server.links.first.drop();
    for (final frame in frames.skip(4)) {
      await d.sendAudio(frame); // the link is down or coming back: nothing may be lost
    }
    final result = await d.stop();
    expect(received(server), frames);
    expect(server.links, hasLength(2));
    expect(result.source, DictationSource.stream);
  });

  test('words that follow the final reach the result across a drop', () async {
    // The final, then (from the second stop on: the first link drops before them) its words.
    List<Map<String, Object?>> withWords(ScriptedServer server, Map<String, dynamic> stop) {
      final answer = coveredFinal(server, stop);
      if (server.stops.length == 1) {
        return [answer.first];
      }
      final timed = [
        {'text': 'hello', 'start': 0.1, 'end': 0.5},
        {'text': 'world', 'start': 0.6, 'end': 1.0},
      ];
      return [
        answer.first,
        {'type': 'words', 'sessionId': 's', 'stopId': stop['stopId'], 'words': timed},
        answer.last,
      ];
    }

    final server = ScriptedServer(answer: withWords);
    final result = await run(dictation(server, words: true));
    expect([for (final o in server.openings) o['words']], [true, true]); // the resume restates it
    expect(server.stops, hasLength(2)); // a final without its words is not the whole answer
    expect((result.source, result.text), (DictationSource.stream, 'hello world'));
    expect([for (final w in result.words!) (w.text, w.start, w.end)], [('hello', 0.1, 0.5), ('world', 0.6, 1.0)]);
    expect(result.wordsReason, isNull);
  });

  test('a reason comes instead of words', () async {
    List<Map<String, Object?>> reason(ScriptedServer server, Map<String, dynamic> stop) {
      final answer = coveredFinal(server, stop);
      return [
        answer.first,
        {'type': 'words', 'sessionId': 's', 'stopId': stop['stopId'], 'reason': 'language_not_aligned'},
        answer.last,
      ];
    }

    final result = await run(dictation(ScriptedServer(answer: reason), words: true));
    expect((result.text, result.words, result.wordsReason), ('hello world', null, 'language_not_aligned'));
    final plain = ScriptedServer();
    final without = await run(dictation(plain));
    expect(plain.openings.first.containsKey('words'), isFalse);
    expect((without.words, without.wordsReason), (null, null));
  });
}
