/// The JSON control messages a client sends, and the v2 coverage rule.
///
/// Field names are the wire contract's; building them in one place keeps
/// the start, a resume and a reissued stop identical in what they claim.
library;

import 'framing.dart';

const int protocolVersion = 1; // framing/message family; the same for v1 and v2
const int controlVersion = 2; // the control protocol this client speaks
const String defaultUrl = 'http://127.0.0.1:8766';
const String wsPath = '/ws/transcribe';
const String wsSubprotocol = 'polyasr';
const String wsKeySubprotocolPrefix = 'polyasr-key.';

/// `start` or `resume`. Both restate language, context, words and
/// confidence: a server that lost the session creates a fresh one from the
/// resume alone (one that still holds it keeps the start's choices).
Map<String, Object> openingMessage(
  String kind,
  String sessionId, {
  String? language,
  String? context,
  bool words = false,
  bool confidence = false,
}) {
  if (kind != 'start' && kind != 'resume') {
    throw ArgumentError.value(kind, 'kind', 'must be start or resume');
  }
  return {
    'type': kind,
    'protocol': protocolVersion,
    'control': controlVersion,
    'sessionId': sessionId,
    'sampleRate': sampleRate,
    'channels': 1,
    'encoding': 'pcm16le',
    if (language != null && language.isNotEmpty) 'language': language,
    if (context != null && context.isNotEmpty) 'context': context,
    if (words) 'words': true,
    if (confidence) 'confidence': true,
  };
}

/// `stop` with the coverage claim: frames `0..finalCapturedSeq-1` are the
/// utterance. A reconnect reissues it unchanged (same `stopId`).
Map<String, Object> stopMessage(
  String sessionId,
  String stopId,
  int finalCapturedSeq,
) =>
    {
      'type': 'stop',
      'protocol': protocolVersion,
      'sessionId': sessionId,
      'stopId': stopId,
      'finalCapturedSeq': finalCapturedSeq,
    };

/// The v2 client rule: a `final` proves it recognized the utterance iff
/// `recognizedThroughSeq` is present and reaches [finalCapturedSeq].
bool covers(Map<String, dynamic> finalMessage, int finalCapturedSeq) {
  final through = finalMessage['recognizedThroughSeq'];
  return through is int && through >= finalCapturedSeq;
}

/// `http(s)://host:port[/prefix]` → `ws(s)://host:port[/prefix]/ws/transcribe`.
/// The base is an HTTP URL because the batch fallback needs one too.
Uri websocketUrl(String baseUrl) {
  final base = Uri.parse(baseUrl);
  final scheme = switch (base.scheme) {
    'http' => 'ws',
    'https' => 'wss',
    _ => throw ArgumentError.value(baseUrl, 'baseUrl', 'not an http(s) URL'),
  };
  var path = base.path;
  while (path.endsWith('/')) {
    path = path.substring(0, path.length - 1);
  }
  return Uri(
    scheme: scheme,
    userInfo: base.userInfo.isEmpty ? null : base.userInfo,
    host: base.host,
    port: base.hasPort ? base.port : null,
    path: '$path$wsPath',
  );
}
