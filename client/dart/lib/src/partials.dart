/// The live hypothesis, rebuilt from `partial` messages by the delta rule.
library;

/// The current partial text, and what a display must do with each update.
///
/// A `delta` is appended verbatim (the server never trims it); a partial
/// without one replaces the text. A delta that would not reproduce the
/// message's `partial` (a partial was lost with a dropped connection) is
/// treated as a replacement, so the text never drifts from the server's.
class PartialText {
  String text = '';

  /// Folds one `partial` in; returns the delta to append, or null when the
  /// whole text was replaced.
  String? apply(Map<String, dynamic> message) {
    final partial = (message['partial'] ?? '').toString();
    final delta = message['delta'];
    final appended = delta is String && text + delta == partial;
    text = partial;
    return appended ? delta as String : null;
  }
}
