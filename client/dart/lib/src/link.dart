/// The socket under a dictation, reduced to what recovery needs.
///
/// A [Dictation] only sends, listens and closes, and treats every way a
/// socket can end (refused, reset, closed by the server) as the end of
/// [Link.messages] or a [LinkClosed]. A [Connector] is the seam where a test
/// (or an app with its own networking) supplies the link.
library;

import 'dart:async';

import 'package:web_socket_channel/web_socket_channel.dart';

import 'messages.dart';

/// The socket ended or never opened; the session may still be resumable.
class LinkClosed implements Exception {
  LinkClosed(this.message);

  final String message;

  @override
  String toString() => 'LinkClosed: $message';
}

abstract interface class Link {
  /// Server messages (JSON text); the stream is done when the socket ends.
  /// Listened to once.
  Stream<Object?> get messages;

  /// Sends one text (JSON) or binary (frame) message; throws [LinkClosed].
  Future<void> send(Object message);

  /// Closes without waiting for anything the server still sends.
  Future<void> close();
}

/// Opens a link to `url`; `apiKey` is the server's `POLYASR_API_KEY` or null.
typedef Connector = Future<Link> Function(Uri url, String? apiKey);

/// A [Link] over a `web_socket_channel` connection.
class WebSocketLink implements Link {
  WebSocketLink(this.channel) {
    channel.stream.listen(
      _inbox.add,
      onError: (Object _) {}, // the stream is done right after; that is the signal
      onDone: () {
        _closed = true;
        unawaited(_inbox.close());
      },
    );
  }

  final WebSocketChannel channel;
  final StreamController<Object?> _inbox = StreamController<Object?>();
  bool _closed = false;

  @override
  Stream<Object?> get messages => _inbox.stream;

  @override
  Future<void> send(Object message) async {
    if (_closed) {
      throw LinkClosed('the socket has closed');
    }
    try {
      channel.sink.add(message);
    } on StateError catch (error) {
      throw LinkClosed('the socket has closed: ${error.message}');
    }
  }

  @override
  Future<void> close() async {
    _closed = true;
    await channel.sink.close();
  }
}

/// Opens [url]; connection failures surface as [LinkClosed]. A key is
/// offered as the subprotocol `polyasr-key.<key>` beside `polyasr` (which the
/// server echoes): browsers cannot set an Authorization header on a socket.
Future<Link> connectWebsocket(Uri url, [String? apiKey]) async {
  final protocols = apiKey == null ? null : [wsSubprotocol, '$wsKeySubprotocolPrefix$apiKey'];
  final channel = WebSocketChannel.connect(url, protocols: protocols);
  try {
    await channel.ready.timeout(const Duration(seconds: 10));
  } on Object catch (error) {
    unawaited(channel.sink.close());
    throw LinkClosed('cannot connect to $url: $error');
  }
  return WebSocketLink(channel);
}
