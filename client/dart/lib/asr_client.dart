/// Client of the polyasr speech-recognition service, in lockstep with the
/// Python package `polyasr-client` (same classes, methods and behaviour).
///
/// [Dictation] streams one utterance over `WS /ws/transcribe` (protocol v2:
/// acks, resume after a dropped connection, coverage proof, batch
/// fallback); [PolyAsrClient] calls the HTTP endpoints.
///
/// ```dart
/// final dictation = Dictation(
///   url: 'http://asr.local:8766',
///   language: 'en',
///   onPartial: (text, delta) => print(text),
/// );
/// await dictation.start();
/// await for (final chunk in microphonePcm16) {  // 16 kHz mono PCM16LE
///   await dictation.sendAudio(chunk);
/// }
/// final result = await dictation.stop();  // result.source: stream or batch
/// ```
library;

export 'src/dictation.dart';
export 'src/errors.dart';
export 'src/framing.dart';
export 'src/http_api.dart';
export 'src/ledger.dart';
export 'src/link.dart';
export 'src/messages.dart';
export 'src/partials.dart';
export 'src/results.dart';
export 'src/wav.dart';
