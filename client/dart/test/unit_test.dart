// Mirror of tests/client/test_unit.py: every test there has one here with the
// same name (underscores as spaces, without the `test_` prefix);
// tests/client/test_lockstep.py checks that.
import 'dart:convert';
import 'dart:typed_data';

import 'package:asr_client/asr_client.dart';
import 'package:http/http.dart' as http;
import 'package:http/testing.dart';
import 'package:test/test.dart';

Uint8List bytes(List<int> values) => Uint8List.fromList(values);

/// The multipart parts of a recorded request: name → (headers, body).
Map<String, ({String headers, List<int> body})> form(http.Request request) {
  final type = request.headers['content-type']!;
  final boundary = RegExp(r'boundary=([^;]+)').firstMatch(type)!.group(1)!;
  final body = latin1.decode(request.bodyBytes);
  final parts = <String, ({String headers, List<int> body})>{};
  for (final chunk in body.split('--$boundary')) {
    final split = chunk.indexOf('\r\n\r\n');
    if (split < 0) {
      continue;
    }
    final headers = chunk.substring(0, split);
    final name = RegExp(r'name="([^"]*)"').firstMatch(headers)!.group(1)!;
    var content = chunk.substring(split + 4);
    if (content.endsWith('\r\n')) {
      content = content.substring(0, content.length - 2);
    }
    parts[name] = (headers: headers, body: latin1.encode(content));
  }
  return parts;
}

String field(http.Request request, String name) => utf8.decode(form(request)[name]!.body);

/// A mock client that answers every request with [response].
class Recorder {
  Recorder(this.response);

  final http.Response Function() response;
  final List<http.Request> requests = [];

  PolyAsrClient client() => PolyAsrClient(
        baseUrl: 'http://asr.test:8766',
        httpClient: MockClient((request) async {
          requests.add(request);
          return response();
        }),
      );
}

http.Response jsonResponse(Object body, {int status = 200, Map<String, String> headers = const {}}) =>
    http.Response(jsonEncode(body), status, headers: {'content-type': 'application/json', ...headers});

void main() {
  group('framing', () {
    test('frame header is basr v1 audio with a big endian seq', () {
      final frame = encodeFrame(0x0102030405060708, [0x10, 0x20]);
      expect(frame, [
        ...ascii.encode('BASR'), 1, 1, 0, 0, //
        1, 2, 3, 4, 5, 6, 7, 8, 0x10, 0x20,
      ]);
    });

    test('frame round trips seq and payload', () {
      final payload = bytes([for (var i = 0; i < 12 * 256; i++) i % 256]);
      final decoded = decodeFrame(encodeFrame(41, payload));
      expect(decoded.seq, 41);
      expect(decoded.payload, payload);
      final empty = decodeFrame(encodeFrame(0, const []));
      expect(empty.seq, 0);
      expect(empty.payload, isEmpty);
    });

    test('decode rejects what the server calls unframed', () {
      final good = encodeFrame(3, [0, 0]);
      final bad = [
        Uint8List.sublistView(good, 0, 15),
        bytes([...ascii.encode('BASX'), ...good.sublist(4)]),
        bytes([...good.sublist(0, 4), 2, ...good.sublist(5)]),
        bytes([...good.sublist(0, 5), 2, ...good.sublist(6)]),
      ];
      for (final frame in bad) {
        expect(() => decodeFrame(frame), throwsA(isA<FrameError>()));
      }
      final flagged = bytes([...good.sublist(0, 6), 0xff, 0xff, ...good.sublist(8)]);
      expect(decodeFrame(flagged).seq, 3); // reserved bytes are ignored
      expect(decodeFrame(flagged).payload, [0, 0]);
    });

    test('a negative seq is refused', () {
      expect(() => encodeFrame(-1, const []), throwsA(isA<RangeError>()));
    });
  });

  group('ack bookkeeping', () {
    test('ledger numbers frames from zero', () {
      final ledger = FrameLedger();
      expect([ledger.add([1]), ledger.add([2]), ledger.add([3])], [0, 1, 2]);
      expect(ledger.nextSeq, 3);
      expect(ledger.acked, -1);
      expect(ledger.unacked(), [0, 1, 2]);
    });

    test('ack is inclusive and never moves back', () {
      final ledger = FrameLedger();
      for (var i = 0; i < 5; i++) {
        ledger.add([0]);
      }
      ledger.ack(2);
      expect(ledger.unacked(), [3, 4]);
      ledger.ack(1); // a late ack from a connection being replaced
      expect(ledger.acked, 2);
      ledger.ack(99);
      expect(ledger.acked, 4);
      expect(ledger.unacked(), isEmpty);
    });

    test('resume rewinds to the server ack seq', () {
      final ledger = FrameLedger();
      for (var i = 0; i < 5; i++) {
        ledger.add([0]);
      }
      ledger.ack(4);
      ledger.rewind(1);
      expect(ledger.unacked(), [2, 3, 4]);
      ledger.rewind(-1); // the server lost the session: everything again
      expect(ledger.unacked(), [0, 1, 2, 3, 4]);
    });

    test('ledger keeps the whole utterance for the fallback', () {
      final ledger = FrameLedger();
      for (final chunk in [
        [1, 0],
        [2, 0, 3, 0],
        [4, 0],
      ]) {
        ledger.add(chunk);
      }
      ledger.ack(2);
      expect(ledger.pcm(), [1, 0, 2, 0, 3, 0, 4, 0]);
      expect(ledger.payload(1), [2, 0, 3, 0]);
    });
  });

  group('the delta rule', () {
    test('a delta is appended', () {
      final text = PartialText();
      expect(text.apply({'type': 'partial', 'partial': 'turn on the', 'delta': 'turn on the'}), 'turn on the');
      expect(text.apply({'type': 'partial', 'partial': 'turn on the lights', 'delta': ' lights'}), ' lights');
      expect(text.text, 'turn on the lights');
    });

    test('a partial without delta replaces the text', () {
      final text = PartialText();
      text.apply({'type': 'partial', 'partial': 'turn on the', 'delta': 'turn on the'});
      expect(text.apply({'type': 'partial', 'partial': 'turn off'}), isNull);
      expect(text.text, 'turn off');
    });

    test('deltas keep their whitespace', () {
      final text = PartialText();
      text.apply({'type': 'partial', 'partial': 'one', 'delta': 'one'});
      expect(text.apply({'type': 'partial', 'partial': 'one ', 'delta': ' '}), ' ');
      expect(text.apply({'type': 'partial', 'partial': 'one  two', 'delta': ' two'}), ' two');
      expect(text.text, 'one  two');
    });

    test('a delta that does not fit resyncs to the partial', () {
      final text = PartialText();
      text.apply({'type': 'partial', 'partial': 'abc', 'delta': 'abc'});
      // the partial "abcdef" (delta "def") was lost with a dropped connection
      expect(text.apply({'type': 'partial', 'partial': 'abcdefgh', 'delta': 'gh'}), isNull);
      expect(text.text, 'abcdefgh');
    });
  });

  group('control messages and the coverage rule', () {
    test('start declares v2 and the audio format', () {
      expect(openingMessage('start', 's-1'), {
        'type': 'start',
        'protocol': 1,
        'control': 2,
        'sessionId': 's-1',
        'sampleRate': 16000,
        'channels': 1,
        'encoding': 'pcm16le',
      });
    });

    test('resume restates language and context', () {
      final message = openingMessage('resume', 's-1', language: 'en', context: 'Zhang Wei');
      expect(message['type'], 'resume');
      expect(message['sessionId'], 's-1');
      expect(message['language'], 'en');
      expect(message['context'], 'Zhang Wei');
    });

    test('confidence is asked in the opening', () {
      expect(openingMessage('start', 's-1', confidence: true)['confidence'], isTrue);
      expect(openingMessage('resume', 's-1').containsKey('confidence'), isFalse);
    });

    test('stop claims the captured frames', () {
      expect(stopMessage('s-1', 's-1-stop', 25), {
        'type': 'stop',
        'protocol': 1,
        'sessionId': 's-1',
        'stopId': 's-1-stop',
        'finalCapturedSeq': 25,
      });
    });

    test('a final covers when recognized through reaches the captured count', () {
      expect(covers({'type': 'final', 'text': 'x', 'recognizedThroughSeq': 25}, 25), isTrue);
      expect(covers({'type': 'final', 'text': 'x', 'recognizedThroughSeq': 26}, 25), isTrue);
    });

    test('a final without recognized through is a guess', () {
      expect(covers({'type': 'final', 'text': 'x'}, 25), isFalse);
      expect(covers({'type': 'final', 'text': '', 'recognizedThroughSeq': null}, 0), isFalse);
    });

    test('a final short of the captured count is a guess', () {
      expect(covers({'type': 'final', 'text': 'x', 'recognizedThroughSeq': 24}, 25), isFalse);
      expect(covers({'type': 'final', 'text': 'x', 'recognizedThroughSeq': true}, 1), isFalse);
      expect(covers({'type': 'final', 'text': 'x', 'recognizedThroughSeq': '25'}, 25), isFalse);
    });

    test('the websocket url follows the http base', () {
      expect(websocketUrl('http://127.0.0.1:8766').toString(), 'ws://127.0.0.1:8766/ws/transcribe');
      expect(websocketUrl('https://asr.example/base/').toString(), 'wss://asr.example/base/ws/transcribe');
      expect(() => websocketUrl('ftp://asr.example'), throwsArgumentError);
    });
  });

  group('typed errors', () {
    test('every ws error code has its own class', () {
      final classes = <Type>{};
      for (final code in wsErrors.keys) {
        final error = errorFromMessage({'type': 'error', 'code': code, 'error': 'text of $code'});
        expect(error.code, code);
        expect(error.message, startsWith('text of $code'));
        expect(error.status, isNull);
        classes.add(error.runtimeType);
      }
      expect(classes, hasLength(wsErrors.length));
      final protocol = {
        for (final code in wsErrors.keys)
          if (errorFromMessage({'code': code, 'error': 'x'}) is ProtocolError) code,
      };
      expect(protocol, {
        'audio_before_start',
        'unframed_audio',
        'unsupported_version',
        'missing_session_id',
        'stop_before_start',
        'unsupported_message',
        'invalid_json',
        'invalid_option',
        // the limits: what the client sent or failed to send
        'text_too_large',
        'frame_too_large',
        'id_too_long',
        'context_too_long',
        'seq_out_of_window',
        'invalid_frame',
        'start_timeout',
        'session_idle',
      });
    });

    test('an unknown ws error code is kept', () {
      final error = errorFromMessage({'type': 'error', 'code': 'rate_limited', 'error': 'slow down'});
      expect(error.runtimeType, PolyAsrError);
      expect(error.code, 'rate_limited');
      expect(error.message, 'slow down');
      expect(errorFromMessage({'error': 'boom'}).code, 'error'); // the upstream shape, no code
    });

    test('http statuses map to classes', () {
      expect(httpErrors.keys.toSet(), {400, 401, 403, 413, 422, 500, 503});
      expect(httpErrors[400]!('x'), isA<BadRequest>());
      expect(httpErrors[401]!('x'), isA<Unauthorized>());
      expect(httpErrors[403]!('x'), isA<Forbidden>());
      expect(httpErrors[413]!('x'), isA<UploadTooLarge>());
      expect(httpErrors[422]!('x'), isA<InvalidRequest>());
      expect(httpErrors[500]!('x'), isA<InternalError>());
      expect(httpErrors[503]!('x').runtimeType, ServiceUnavailable);
      final bad = errorFromResponse(400, {}, jsonEncode({'detail': 'audio does not decode'}));
      expect(bad, isA<BadRequest>());
      expect((bad.status, bad.message), (400, 'audio does not decode'));
      expect(bad.code, 'bad_request'); // no code in the body: the class's own
      final busy = errorFromResponse(503, {'retry-after': '7'}, jsonEncode({'detail': 'align is in use'}));
      expect(busy.runtimeType, ServiceUnavailable);
      expect(busy.retryAfter, 7.0);
      final invalid = errorFromResponse(422, {}, jsonEncode({'detail': 'file: Field required'}));
      expect(invalid, isA<InvalidRequest>());
      expect((invalid.detail, invalid.message), ('file: Field required', 'file: Field required'));
      final other = errorFromResponse(404, {}, jsonEncode({'detail': 'Not Found'}));
      expect(other.runtimeType, PolyAsrError);
      expect((other.code, other.status), ('http_404', 404));
    });

    test('http error codes pick their class and are kept', () {
      PolyAsrError answer(int status, String code, [String detail = 'what was wrong']) => errorFromResponse(
            status,
            {'retry-after': '2'},
            jsonEncode({
              'detail': detail,
              'error': {'message': detail, 'type': 'invalid_request_error', 'code': code},
            }),
          );

      final audio = answer(400, 'invalid_audio', 'the file is empty');
      expect(audio.runtimeType, BadRequest);
      expect((audio.code, audio.message), ('invalid_audio', 'the file is empty'));
      final busy = answer(503, 'server_busy');
      expect(busy.runtimeType, ServerBusy);
      expect(busy, isNot(isA<ModelUnavailable>()));
      expect(busy, isA<ServiceUnavailable>());
      expect((busy.code, busy.retryAfter), ('server_busy', 2.0));
      expect(answer(503, 'model_unavailable').runtimeType, ModelUnavailable);
      expect(answer(503, 'model_busy').runtimeType, ModelBusy);
      expect(answer(503, 'server_shutting_down').runtimeType, ServerShuttingDown);
      expect(answer(503, 'decode_timeout').runtimeType, DecodeTimeout);
      final long = answer(413, 'audio_too_long');
      expect(long.runtimeType, AudioTooLong);
      expect(long, isA<UploadTooLarge>());
      final language = answer(422, 'unsupported_language');
      expect(language.runtimeType, UnsupportedLanguage);
      expect(language, isA<InvalidRequest>());
      final forbidden = answer(403, 'path_not_allowed');
      expect(forbidden.runtimeType, Forbidden);
      expect(forbidden.code, 'path_not_allowed');
      final key = answer(401, 'unauthorized', 'a valid API key is required');
      expect(key.runtimeType, Unauthorized);
      expect(key.status, 401);
      expect(key.message, startsWith('a valid API key is required'));
      expect(key.message, contains('apiKey'));
      expect(httpCodes.keys.toSet(), {
        'audio_too_long',
        'unsupported_language',
        'model_unavailable',
        'model_busy',
        'decode_timeout',
        'server_busy',
        'server_shutting_down',
      });
    });

    test('an http error without a json body keeps its text', () {
      final error = errorFromResponse(500, {}, 'Internal Server Error');
      expect(error, isA<InternalError>());
      expect(error.message, 'Internal Server Error');
      expect(errorFromResponse(503, {'retry-after': 'Wed, 21 Oct 2026 07:28:00 GMT'}, '').retryAfter, isNull);
    });
  });

  group('WAV for the fallback', () {
    test('wav wraps pcm16 mono 16k unchanged', () {
      final pcm = bytes([for (var i = 0; i < 200; i++) i]);
      final wav = wavFromPcm16(pcm);
      final view = ByteData.sublistView(wav);
      expect(ascii.decode(wav.sublist(0, 4)), 'RIFF');
      expect(ascii.decode(wav.sublist(8, 16)), 'WAVEfmt ');
      expect(view.getUint16(20, Endian.little), 1); // PCM
      expect(view.getUint16(22, Endian.little), 1); // mono
      expect(view.getUint32(24, Endian.little), 16000);
      expect(view.getUint16(34, Endian.little), 16);
      expect(ascii.decode(wav.sublist(36, 40)), 'data');
      expect(view.getUint32(40, Endian.little), 200);
      expect(wav.sublist(44), pcm);
    });
  });

  group('HTTP calls', () {
    test('transcribe sends the form and reports upload progress', () async {
      final body = {'text': 'hello', 'language': 'English', 'duration': 2.5};
      final recorder = Recorder(() => jsonResponse(body));
      final audio = Uint8List(200000);
      final progress = <(int, int)>[];
      final result = await recorder.client().transcribe(
            AudioUpload.bytes(audio, filename: 'memo.m4a'),
            language: 'en',
            context: 'Zhang Wei',
            responseFormat: 'verbose_json',
            onProgress: (sent, total) => progress.add((sent, total)),
          );
      expect((result.text, result.language, result.duration), ('hello', 'English', 2.5));
      expect(result.raw, body);
      final request = recorder.requests.single;
      expect((request.method, request.url.path), ('POST', '/v1/audio/transcriptions'));
      final parts = form(request);
      expect(parts['file']!.headers, contains('filename="memo.m4a"'));
      expect(parts['file']!.body, audio);
      expect(field(request, 'language'), 'en');
      expect(field(request, 'context'), 'Zhang Wei');
      expect(field(request, 'response_format'), 'verbose_json');
      final total = request.bodyBytes.length;
      expect(progress.length, greaterThan(1));
      expect(progress.every((p) => p.$2 == total), isTrue);
      final sent = [for (final p in progress) p.$1];
      expect(sent, orderedEquals([...sent]..sort()));
      expect(sent.last, total);
    });

    test('transcribe asks for logprobs and reads them', () async {
      final body = {
        'text': 'h\u00e9',
        'logprobs': [
          {'token': 'h', 'logprob': -0.25, 'bytes': [104]},
          {'token': '\ufffd', 'logprob': -1.5, 'bytes': [195.0, 169.0]},
        ],
      };
      final recorder = Recorder(() => jsonResponse(body));
      final result = await recorder.client().transcribe(AudioUpload.bytes(ascii.encode('RIFF')), include: ['logprobs']);
      await recorder.client().transcribe(AudioUpload.bytes(ascii.encode('RIFF')));
      expect(field(recorder.requests.first, 'include[]'), 'logprobs');
      expect([for (final t in result.logprobs!) (t.token, t.logprob, t.bytes)], [
        ('h', -0.25, [104]),
        ('\ufffd', -1.5, [195, 169]),
      ]);
      expect(form(recorder.requests.last).containsKey('include[]'), isFalse); // only when asked
    });

    test('transcribe text format returns the plain body', () async {
      final recorder = Recorder(() => http.Response('plain words', 200));
      final result = await recorder.client().transcribe(AudioUpload.bytes(ascii.encode('RIFF')), responseFormat: 'text');
      final subtitles = await recorder.client().transcribe(AudioUpload.bytes(ascii.encode('RIFF')), responseFormat: 'srt');
      expect(result.text, 'plain words');
      expect(result.raw, isNull);
      expect(subtitles.text, 'plain words'); // srt and vtt are plain text too
      expect(form(recorder.requests.first).containsKey('language'), isFalse); // left to the server
    });

    test('align sends file text and language', () async {
      final body = {
        'text': 'hi there',
        'language': 'English',
        'segments': [
          {
            'text': 'hi there',
            'start': 0.0,
            'end': 0.9,
            'words': [
              {'text': 'hi', 'start': 0.0, 'end': 0.3},
              {'text': 'there', 'start': 0.4, 'end': 0.9},
            ],
          },
        ],
        'model': 'asr + aligner',
      };
      final recorder = Recorder(() => jsonResponse(body));
      final result = await recorder.client().align(
            AudioUpload.bytes(ascii.encode('RIFFdata')),
            text: 'hi there',
            language: 'en',
            maxChunkSeconds: 120,
          );
      final request = recorder.requests.single;
      expect(request.url.path, '/v1/align');
      expect(form(request)['file']!.body, ascii.encode('RIFFdata'));
      expect((field(request, 'text'), field(request, 'language')), ('hi there', 'en'));
      expect(field(request, 'max_chunk_seconds'), '120');
      expect(result.toJson(), body);
      expect([for (final word in result.segments.single.words) word.text], ['hi', 'there']);
    });

    test('align manifest posts json', () async {
      final recorder = Recorder(() => jsonResponse({'text': '', 'language': null, 'segments': [], 'model': 'm'}));
      final result = await recorder.client().alignManifest(
        const [ManifestEntry('/data/a.wav'), ManifestEntry('/data/b.wav', offset: 12.5, id: 'b', text: 'good morning')],
        language: 'zh',
        maxChunkSeconds: 90,
      );
      final request = recorder.requests.single;
      expect(request.url.path, '/v1/align/manifest');
      expect(jsonDecode(request.body), {
        'manifest': [
          {'path': '/data/a.wav', 'offset': 0.0},
          {'path': '/data/b.wav', 'offset': 12.5, 'id': 'b', 'text': 'good morning'},
        ],
        'language': 'zh',
        'max_chunk_seconds': 90,
      });
      expect(result.segments, isEmpty);
      expect(result.language, isNull);
    });

    test('http errors raise typed errors', () async {
      final body = {
        'detail': 'asr busy',
        'error': {'message': 'asr busy', 'code': 'model_unavailable'},
      };
      final recorder = Recorder(() => jsonResponse(body, status: 503, headers: {'retry-after': '3'}));
      await expectLater(
        recorder.client().transcribe(AudioUpload.bytes(ascii.encode('RIFF'))),
        throwsA(isA<ModelUnavailable>()
            .having((e) => e.retryAfter, 'retryAfter', 3.0)
            .having((e) => e.status, 'status', 503)
            .having((e) => e.message, 'message', 'asr busy')),
      );
    });

    test('health and unload use their paths', () async {
      final recorder = Recorder(() => jsonResponse({'status': 'ok', 'unloaded': []}));
      final client = recorder.client();
      expect((await client.health())['status'], 'ok');
      expect((await client.unload())['unloaded'], isEmpty);
      expect([for (final r in recorder.requests) '${r.method} ${r.url.path}'], ['GET /health', 'POST /model/unload']);
    });

    test('the api key goes as a bearer header', () async {
      final requests = <http.Request>[];
      PolyAsrClient client({String? apiKey}) => PolyAsrClient(
            baseUrl: 'http://asr.test:8766',
            apiKey: apiKey,
            httpClient: MockClient((request) async {
              requests.add(request);
              return jsonResponse({'status': 'ok'});
            }),
          );
      await client().health();
      await client(apiKey: 'k-1').health();
      expect([for (final r in requests) r.headers['authorization']], [null, 'Bearer k-1']);
    });
  });
}
