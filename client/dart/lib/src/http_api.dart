/// The HTTP half of the service: batch transcription, alignment, health,
/// unload.
///
/// Uploads report bytes sent, which is all a progress bar can honestly show:
/// the server's own work has no progress signal.
library;

import 'dart:async';
import 'dart:convert';

import 'package:http/http.dart' as http;

import 'errors.dart';
import 'messages.dart';
import 'results.dart';

/// `(bytes sent, total bytes)` of an upload's request body.
typedef ProgressCallback = void Function(int sent, int total);

/// Response formats the server answers as plain text rather than JSON.
const List<String> plainFormats = ['text', 'srt', 'vtt'];

/// Encoded audio in any container the server decodes: bytes in memory, or
/// a stream of known length (a file read in chunks, never all in memory).
/// No `dart:io` here, so the package also runs on the web.
class AudioUpload {
  AudioUpload.bytes(List<int> bytes, {this.filename = 'audio.wav'})
      : _bytes = bytes,
        _stream = null,
        length = bytes.length;

  AudioUpload.stream(Stream<List<int>> stream, this.length, {this.filename = 'audio.wav'})
      : _bytes = null,
        _stream = stream;

  /// The upload's name; its suffix hints the container to the server.
  final String filename;
  final int length;
  final List<int>? _bytes;
  final Stream<List<int>>? _stream;

  http.MultipartFile _part() {
    final bytes = _bytes;
    return bytes != null
        ? http.MultipartFile.fromBytes('file', bytes, filename: filename)
        : http.MultipartFile('file', _stream!, length, filename: filename);
  }
}

/// Client of the HTTP endpoints of one polyasr server.
class PolyAsrClient {
  PolyAsrClient({
    String baseUrl = defaultUrl,
    this.apiKey,
    http.Client? httpClient,
    this.timeout = const Duration(minutes: 10),
  })  : baseUrl = baseUrl.endsWith('/') ? baseUrl.substring(0, baseUrl.length - 1) : baseUrl,
        _http = httpClient ?? http.Client();

  final String baseUrl;

  /// The server's `POLYASR_API_KEY`, sent as `Authorization: Bearer`; null = none.
  final String? apiKey;
  final Duration timeout;
  final http.Client _http;

  void close() => _http.close();

  /// `POST /v1/audio/transcriptions`; `text`, `srt` and `vtt` answer plain
  /// text, which is the result's `text`.
  Future<Transcription> transcribe(
    AudioUpload audio, {
    String? language,
    String? context,
    String responseFormat = 'json',
    ProgressCallback? onProgress,
  }) async {
    final fields = _fields({
      'language': language,
      'context': context,
      'response_format': responseFormat,
    });
    final response = await _upload('/v1/audio/transcriptions', audio, fields, onProgress);
    if (plainFormats.contains(responseFormat.toLowerCase())) {
      return Transcription(utf8.decode(response.bodyBytes));
    }
    final body = _json(response);
    return Transcription(
      (body['text'] ?? '').toString(),
      language: body['language'] as String?,
      duration: (body['duration'] as num?)?.toDouble(),
      raw: body,
    );
  }

  /// `POST /v1/audio/transcriptions` with `response_format=diarized_json`:
  /// who said what. [knownSpeakers] maps up to four names to a 2-10 s
  /// recording of each (encoded audio), sent as data URLs.
  Future<Diarization> diarize(
    AudioUpload audio, {
    String? language,
    String? context,
    Map<String, List<int>>? knownSpeakers,
    int? minSpeakers,
    int? maxSpeakers,
    ProgressCallback? onProgress,
  }) async {
    final fields = _fields({
      'language': language,
      'context': context,
      'response_format': 'diarized_json',
      'min_speakers': minSpeakers,
      'max_speakers': maxSpeakers,
    });
    final known = knownSpeakers ?? const <String, List<int>>{};
    final lists = {
      'known_speaker_names[]': known.keys.toList(),
      'known_speaker_references[]': [for (final audio in known.values) _dataUrl(audio)],
    };
    final response = await _upload('/v1/audio/transcriptions', audio, fields, onProgress, lists);
    return Diarization.fromJson(_json(response));
  }

  /// `POST /v1/align`: word and sentence times, of [text] when given (no
  /// recognition pass), else of what the server recognizes; with [diarize],
  /// sentences cut at speaker turns, each with its speaker.
  Future<AlignResult> align(
    AudioUpload audio, {
    String? text,
    String? language,
    int? maxChunkSeconds,
    bool diarize = false,
    int? minSpeakers,
    int? maxSpeakers,
    ProgressCallback? onProgress,
  }) async {
    final fields = _fields({
      'language': language,
      'text': text,
      'max_chunk_seconds': maxChunkSeconds,
      'diarize': diarize ? 'true' : null,
      'min_speakers': minSpeakers,
      'max_speakers': maxSpeakers,
    });
    return AlignResult.fromJson(_json(await _upload('/v1/align', audio, fields, onProgress)));
  }

  /// `POST /v1/align/manifest`: clips already on the server, aligned in
  /// order as one result (with [diarize], speakers across all of them).
  Future<AlignResult> alignManifest(
    List<ManifestEntry> entries, {
    String? language,
    int? maxChunkSeconds,
    bool diarize = false,
    int? minSpeakers,
    int? maxSpeakers,
  }) async {
    final body = <String, Object>{
      'manifest': [for (final entry in entries) entry.toJson()],
      if (language != null) 'language': language,
      if (maxChunkSeconds != null) 'max_chunk_seconds': maxChunkSeconds,
      if (diarize) 'diarize': true,
      if (minSpeakers != null) 'min_speakers': minSpeakers,
      if (maxSpeakers != null) 'max_speakers': maxSpeakers,
    };
    final request = http.Request('POST', _uri('/v1/align/manifest'))
      ..headers['content-type'] = 'application/json'
      ..body = jsonEncode(body);
    return AlignResult.fromJson(_json(await _send(request)));
  }

  /// `GET /health` (always 200; read `status`).
  Future<Map<String, dynamic>> health() async =>
      _json(await _send(http.Request('GET', _uri('/health'))));

  /// `POST /model/unload`: evict every resident model unit now.
  Future<Map<String, dynamic>> unload() async =>
      _json(await _send(http.Request('POST', _uri('/model/unload'))));

  Uri _uri(String path) => Uri.parse('$baseUrl$path');

  Future<http.Response> _upload(
    String path,
    AudioUpload audio,
    Map<String, String> fields,
    ProgressCallback? onProgress, [
    Map<String, List<String>> lists = const {},
  ]) {
    // A MultipartRequest's fields are a map (one value per name); fields
    // that repeat (`known_speaker_names[]`) go in as parts of their own.
    final multipart = http.MultipartRequest('POST', _uri(path))
      ..fields.addAll(fields)
      ..files.addAll([
        for (final entry in lists.entries)
          for (final value in entry.value) http.MultipartFile.fromString(entry.key, value),
      ])
      ..files.add(audio._part());
    final body = multipart.finalize(); // also sets the boundary header
    final total = multipart.contentLength;
    final request = http.StreamedRequest('POST', _uri(path))
      ..headers.addAll(multipart.headers)
      ..contentLength = total;
    var sent = 0;
    final counted = body.map((chunk) {
      sent += chunk.length;
      onProgress?.call(sent, total);
      return chunk;
    });
    unawaited(request.sink.addStream(counted).then((_) => request.sink.close()));
    return _send(request);
  }

  Future<http.Response> _send(http.BaseRequest request) async {
    final key = apiKey;
    if (key != null) request.headers['authorization'] = 'Bearer $key';
    Future<http.Response> exchange() async => http.Response.fromStream(await _http.send(request));
    final http.Response response;
    try {
      response = await exchange().timeout(timeout);
    } on http.ClientException catch (error) {
      throw ConnectionLost('cannot reach $baseUrl: ${error.message}');
    } on TimeoutException {
      throw ConnectionLost('no answer from $baseUrl within $timeout');
    }
    if (response.statusCode >= 400) {
      final text = utf8.decode(response.bodyBytes, allowMalformed: true);
      throw errorFromResponse(response.statusCode, response.headers, text);
    }
    return response;
  }
}

/// Encoded audio as a base64 data URL; the server reads the container from
/// the bytes, so the media type stays generic.
String _dataUrl(List<int> audio) => 'data:application/octet-stream;base64,${base64Encode(audio)}';

/// Form fields, leaving out the unset ones so server defaults apply.
Map<String, String> _fields(Map<String, Object?> values) => {
      for (final entry in values.entries)
        if (entry.value != null) entry.key: entry.value.toString(),
    };

/// JSON bodies are UTF-8 whatever the content type says (package:http
/// would read a charset-less `application/json` as Latin-1).
Map<String, dynamic> _json(http.Response response) {
  final decoded = jsonDecode(utf8.decode(response.bodyBytes));
  if (decoded is! Map<String, dynamic>) {
    throw PolyAsrError('expected a JSON object from ${response.request?.url}');
  }
  return decoded;
}
