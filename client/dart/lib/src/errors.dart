/// Typed errors for everything the service can refuse.
///
/// The server puts a machine `code` in every WebSocket `error` and answers
/// HTTP failures with a status and `{"detail": ..., "error": {"code": ...}}`;
/// callers should branch on a class (retry on [ServiceUnavailable], fix the
/// request on [InvalidRequest], pass the key on [Unauthorized]), never on the
/// human text. An HTTP error takes the class of its code where the code has
/// one (`server_busy` is a [ServerBusy]), else the class of its status, and
/// keeps the server's code either way (a 400 `invalid_audio` is a
/// [BadRequest] whose `code` is `invalid_audio`).
library;

import 'dart:convert';

/// Base of every error this client raises for the service.
class PolyAsrError implements Exception {
  PolyAsrError(
    this.message, {
    this.code = 'error',
    this.status,
    this.detail,
    this.retryAfter,
  });

  final String message;
  final String code;

  /// HTTP status, null for WebSocket errors.
  final int? status;

  /// The body's `detail` as sent.
  final Object? detail;

  /// Seconds, from a 503's Retry-After.
  final double? retryAfter;

  @override
  String toString() => '$runtimeType($code): $message';
}

/// The server rejected our use of the dictation protocol: a client bug.
class ProtocolError extends PolyAsrError {
  ProtocolError(super.message,
      {super.code = 'protocol_error', super.status, super.detail, super.retryAfter});
}

class AudioBeforeStart extends ProtocolError {
  AudioBeforeStart(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'audio_before_start');
}

class UnframedAudio extends ProtocolError {
  UnframedAudio(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'unframed_audio');
}

class UnsupportedVersion extends ProtocolError {
  UnsupportedVersion(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'unsupported_version');
}

class MissingSessionId extends ProtocolError {
  MissingSessionId(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'missing_session_id');
}

class StopBeforeStart extends ProtocolError {
  StopBeforeStart(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'stop_before_start');
}

class UnsupportedMessage extends ProtocolError {
  UnsupportedMessage(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'unsupported_message');
}

class InvalidJson extends ProtocolError {
  InvalidJson(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'invalid_json');
}

/// A `start`/`resume` option of the wrong type (`words` or `confidence` not a boolean).
class InvalidOption extends ProtocolError {
  InvalidOption(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'invalid_option');
}

class UnsupportedAudioFormat extends PolyAsrError {
  UnsupportedAudioFormat(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'unsupported_audio_format');
}

/// HTTP 422: a missing or malformed field (the message names it), or an
/// unsupported language.
class InvalidRequest extends PolyAsrError {
  InvalidRequest(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'invalid_request');
}

class UnsupportedLanguage extends InvalidRequest {
  UnsupportedLanguage(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'unsupported_language');
}

const String keyHint = "pass the server's key: apiKey (the server's POLYASR_API_KEY)";

/// The server has an API key and was not given it, or a wrong one (HTTP
/// 401, WS `unauthorized`); the message says how to pass it.
class Unauthorized extends PolyAsrError {
  Unauthorized(String message, {String? code, super.status, super.detail, super.retryAfter})
      : super('$message ($keyHint)', code: code ?? 'unauthorized');
}

/// HTTP 403: a manifest path outside the server's roots
/// (`path_not_allowed`), or a browser origin it does not allow.
class Forbidden extends PolyAsrError {
  Forbidden(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'forbidden');
}

/// HTTP 503: the server cannot do this now; retry after [retryAfter]
/// seconds (or route elsewhere). The subclasses say why.
class ServiceUnavailable extends PolyAsrError {
  ServiceUnavailable(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'service_unavailable');
}

/// The model cannot be loaded now (WS `model_unavailable`, HTTP 503).
class ModelUnavailable extends ServiceUnavailable {
  ModelUnavailable(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'model_unavailable');
}

/// HTTP 503: the other model unit is in use and only one may be resident.
class ModelBusy extends ServiceUnavailable {
  ModelBusy(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'model_busy');
}

/// HTTP 503: the model took longer than the server's decode timeout.
class DecodeTimeout extends ServiceUnavailable {
  DecodeTimeout(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'decode_timeout');
}

class InternalError extends PolyAsrError {
  InternalError(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'internal_error');
}

class TextTooLarge extends ProtocolError {
  TextTooLarge(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'text_too_large');
}

class FrameTooLarge extends ProtocolError {
  FrameTooLarge(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'frame_too_large');
}

class IdTooLong extends ProtocolError {
  IdTooLong(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'id_too_long');
}

class ContextTooLong extends ProtocolError {
  ContextTooLong(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'context_too_long');
}

class SeqOutOfWindow extends ProtocolError {
  SeqOutOfWindow(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'seq_out_of_window');
}

class InvalidFrame extends ProtocolError {
  InvalidFrame(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'invalid_frame');
}

class TooManyDuplicates extends ProtocolError {
  TooManyDuplicates(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'too_many_duplicates');
}

class StartTimeout extends ProtocolError {
  StartTimeout(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'start_timeout');
}

class SessionIdle extends ProtocolError {
  SessionIdle(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'session_idle');
}

/// Over the server's `POLYASR_MAX_SESSION_SEC` of audio: resume and stop to get the final.
class SessionTooLong extends PolyAsrError {
  SessionTooLong(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'session_too_long');
}

/// Too many live dictations (close 1013), or too many queued decodes (HTTP
/// 503): retry later.
class ServerBusy extends ServiceUnavailable {
  ServerBusy(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'server_busy');
}

/// The server is restarting (close 1012 mid-session, 1013 at a start): a
/// dictation treats it like a dropped connection and resumes once it is back.
class ServerShuttingDown extends ServiceUnavailable {
  ServerShuttingDown(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'server_shutting_down');
}

/// HTTP 400: the upload does not decode as audio or is empty, or a manifest
/// entry is invalid (missing, relative or unknown path).
class BadRequest extends PolyAsrError {
  BadRequest(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'bad_request');
}

/// HTTP 413: over the server's `POLYASR_MAX_UPLOAD_MB`.
class UploadTooLarge extends PolyAsrError {
  UploadTooLarge(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'upload_too_large');
}

/// HTTP 413: the audio decodes to more than the server's
/// `POLYASR_MAX_AUDIO_SEC`.
class AudioTooLong extends UploadTooLarge {
  AudioTooLong(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'audio_too_long');
}

/// The service could not be reached, or the dictation socket could not be
/// re-established within the retries.
class ConnectionLost extends PolyAsrError {
  ConnectionLost(super.message, {String? code, super.status, super.detail, super.retryAfter})
      : super(code: code ?? 'connection_lost');
}

typedef ErrorFactory = PolyAsrError Function(
  String message, {
  String? code,
  int? status,
  Object? detail,
  double? retryAfter,
});

final Map<String, ErrorFactory> wsErrors = {
  'audio_before_start': AudioBeforeStart.new,
  'unframed_audio': UnframedAudio.new,
  'unsupported_version': UnsupportedVersion.new,
  'missing_session_id': MissingSessionId.new,
  'stop_before_start': StopBeforeStart.new,
  'unsupported_message': UnsupportedMessage.new,
  'invalid_json': InvalidJson.new,
  'invalid_option': InvalidOption.new,
  'unsupported_audio_format': UnsupportedAudioFormat.new,
  'unsupported_language': UnsupportedLanguage.new,
  'model_unavailable': ModelUnavailable.new,
  'internal_error': InternalError.new,
  'text_too_large': TextTooLarge.new,
  'frame_too_large': FrameTooLarge.new,
  'id_too_long': IdTooLong.new,
  'context_too_long': ContextTooLong.new,
  'seq_out_of_window': SeqOutOfWindow.new,
  'invalid_frame': InvalidFrame.new,
  'too_many_duplicates': TooManyDuplicates.new,
  'start_timeout': StartTimeout.new,
  'session_idle': SessionIdle.new,
  'session_too_long': SessionTooLong.new,
  'server_busy': ServerBusy.new,
  'server_shutting_down': ServerShuttingDown.new,
  'unauthorized': Unauthorized.new,
};

final Map<int, ErrorFactory> httpErrors = {
  400: BadRequest.new,
  401: Unauthorized.new,
  403: Forbidden.new,
  413: UploadTooLarge.new,
  422: InvalidRequest.new,
  500: InternalError.new,
  503: ServiceUnavailable.new,
};

/// HTTP error codes with a class of their own (each a subclass of its status's class).
final Map<String, ErrorFactory> httpCodes = {
  'audio_too_long': AudioTooLong.new,
  'unsupported_language': UnsupportedLanguage.new,
  'model_unavailable': ModelUnavailable.new,
  'model_busy': ModelBusy.new,
  'decode_timeout': DecodeTimeout.new,
  'server_busy': ServerBusy.new,
  'server_shutting_down': ServerShuttingDown.new,
};

/// The typed error for a WebSocket `error` message; an unknown code keeps
/// its code on the base class rather than being dropped.
PolyAsrError errorFromMessage(Map<String, dynamic> message) {
  final code = message['code'];
  final error = message['error'];
  final text = error is String && error.isNotEmpty ? error : 'dictation failed';
  if (code is String && wsErrors.containsKey(code)) {
    return wsErrors[code]!(text);
  }
  return PolyAsrError(text, code: code is String && code.isNotEmpty ? code : 'error');
}

/// The typed error for a non-2xx HTTP answer: the class of the body's
/// `error.code` if it has one, else of the status; the server's code kept.
PolyAsrError errorFromResponse(int status, Map<String, String> headers, String body) {
  Object? detail;
  String? code;
  try {
    final decoded = jsonDecode(body);
    if (decoded is Map) {
      detail = decoded['detail'];
      final error = decoded['error'];
      final named = error is Map ? error['code'] : null;
      code = named is String && named.isNotEmpty ? named : null;
    } else {
      detail = body;
    }
  } on FormatException {
    detail = body.isEmpty ? null : body;
  }
  final message = detail is String
      ? detail
      : detail != null
          ? jsonEncode(detail)
          : 'HTTP $status';
  final retryAfter = _seconds(headers['retry-after'] ?? headers['Retry-After']);
  final factory = httpCodes[code] ?? httpErrors[status];
  if (factory == null) {
    return PolyAsrError(message, code: code ?? 'http_$status', status: status, detail: detail);
  }
  return factory(message, code: code, status: status, detail: detail, retryAfter: retryAfter);
}

/// Retry-After in its delta-seconds form; the HTTP-date form is not used
/// by the server and reads as absent.
double? _seconds(String? value) => value == null ? null : double.tryParse(value);
