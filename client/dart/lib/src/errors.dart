/// Typed errors for everything the service can refuse.
///
/// The server puts a machine `code` in every WebSocket `error` and answers
/// HTTP failures with a status and `{"detail": ...}`; callers should branch
/// on a class (retry on [ModelUnavailable], fix the request on
/// [InvalidRequest]), never on the human text.
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

  /// The body's `detail` as sent (a list for 422 validation errors).
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
  AudioBeforeStart(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'audio_before_start');
}

class UnframedAudio extends ProtocolError {
  UnframedAudio(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'unframed_audio');
}

class UnsupportedVersion extends ProtocolError {
  UnsupportedVersion(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'unsupported_version');
}

class MissingSessionId extends ProtocolError {
  MissingSessionId(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'missing_session_id');
}

class StopBeforeStart extends ProtocolError {
  StopBeforeStart(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'stop_before_start');
}

class UnsupportedMessage extends ProtocolError {
  UnsupportedMessage(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'unsupported_message');
}

class InvalidJson extends ProtocolError {
  InvalidJson(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'invalid_json');
}

class UnsupportedAudioFormat extends PolyAsrError {
  UnsupportedAudioFormat(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'unsupported_audio_format');
}

class UnsupportedLanguage extends PolyAsrError {
  UnsupportedLanguage(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'unsupported_language');
}

/// The model cannot be loaded now (WS `model_unavailable`, HTTP 503): route
/// elsewhere or retry after [retryAfter] seconds.
class ModelUnavailable extends PolyAsrError {
  ModelUnavailable(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'model_unavailable');
}

class InternalError extends PolyAsrError {
  InternalError(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'internal_error');
}

class TextTooLarge extends ProtocolError {
  TextTooLarge(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'text_too_large');
}

class FrameTooLarge extends ProtocolError {
  FrameTooLarge(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'frame_too_large');
}

class IdTooLong extends ProtocolError {
  IdTooLong(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'id_too_long');
}

class ContextTooLong extends ProtocolError {
  ContextTooLong(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'context_too_long');
}

class SeqOutOfWindow extends ProtocolError {
  SeqOutOfWindow(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'seq_out_of_window');
}

class InvalidFrame extends ProtocolError {
  InvalidFrame(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'invalid_frame');
}

class StartTimeout extends ProtocolError {
  StartTimeout(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'start_timeout');
}

class SessionIdle extends ProtocolError {
  SessionIdle(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'session_idle');
}

/// Over the server's `POLYASR_MAX_SESSION_SEC` of audio: resume and stop to get the final.
class SessionTooLong extends PolyAsrError {
  SessionTooLong(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'session_too_long');
}

/// Too many live dictations (close 1013): retry later.
class ServerBusy extends PolyAsrError {
  ServerBusy(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'server_busy');
}

/// The server is restarting (close 1012 mid-session, 1013 at a start): a
/// dictation treats it like a dropped connection and resumes once it is back.
class ServerShuttingDown extends PolyAsrError {
  ServerShuttingDown(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'server_shutting_down');
}

/// HTTP 400: the upload does not decode as audio or is empty, or a manifest
/// entry is invalid (missing, relative or unknown path).
class BadRequest extends PolyAsrError {
  BadRequest(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'bad_request');
}

/// HTTP 413: over the server's `POLYASR_MAX_UPLOAD_MB`.
class UploadTooLarge extends PolyAsrError {
  UploadTooLarge(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'upload_too_large');
}

/// HTTP 422: a missing or malformed field, or an unsupported language.
class InvalidRequest extends PolyAsrError {
  InvalidRequest(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'invalid_request');
}

/// The service could not be reached, or the dictation socket could not be
/// re-established within the retries.
class ConnectionLost extends PolyAsrError {
  ConnectionLost(super.message, {super.status, super.detail, super.retryAfter})
      : super(code: 'connection_lost');
}

typedef ErrorFactory = PolyAsrError Function(
  String message, {
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
  'start_timeout': StartTimeout.new,
  'session_idle': SessionIdle.new,
  'session_too_long': SessionTooLong.new,
  'server_busy': ServerBusy.new,
  'server_shutting_down': ServerShuttingDown.new,
};

final Map<int, ErrorFactory> httpErrors = {
  400: BadRequest.new,
  413: UploadTooLarge.new,
  422: InvalidRequest.new,
  500: InternalError.new,
  503: ModelUnavailable.new,
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

/// The typed error for a non-2xx HTTP answer with a FastAPI body.
PolyAsrError errorFromResponse(int status, Map<String, String> headers, String body) {
  Object? detail;
  try {
    final decoded = jsonDecode(body);
    detail = decoded is Map ? decoded['detail'] : body;
  } on FormatException {
    detail = body.isEmpty ? null : body;
  }
  final message = detail is String
      ? detail
      : detail != null
          ? jsonEncode(detail)
          : 'HTTP $status';
  final retryAfter = _seconds(headers['retry-after'] ?? headers['Retry-After']);
  final factory = httpErrors[status];
  if (factory == null) {
    return PolyAsrError(message, code: 'http_$status', status: status, detail: detail);
  }
  return factory(message, status: status, detail: detail, retryAfter: retryAfter);
}

/// Retry-After in its delta-seconds form; the HTTP-date form is not used
/// by the server and reads as absent.
double? _seconds(String? value) => value == null ? null : double.tryParse(value);
