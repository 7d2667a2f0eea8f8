/// BASR audio frames: the only binary message the dictation socket accepts.
///
/// The header is big-endian while the PCM payload is little-endian; keeping
/// both encodings here means no other file ever touches byte order.
library;

import 'dart:typed_data';

const List<int> basrMagic = [0x42, 0x41, 0x53, 0x52]; // ASCII "BASR"
const int framingVersion = 1;
const int frameTypeAudio = 1;
const int headerSize = 16;
const int sampleRate = 16000;
const int bytesPerSecond = 32000; // 16 kHz x 16-bit x mono
const int frameBytes = 3200; // 100 ms, what every client of the protocol sends

/// Bytes that are not a BASR v1 audio frame.
class FrameError extends FormatException {
  const FrameError(super.message);
}

/// One binary message: the 16-byte header (reserved bytes zero) and [pcm].
///
/// The u64 `seq` is written as two u32 halves: `ByteData.setUint64` is not
/// available when compiled to JavaScript (Flutter web).
Uint8List encodeFrame(int seq, List<int> pcm) {
  if (seq < 0) {
    throw RangeError.value(seq, 'seq', 'must be >= 0');
  }
  final frame = Uint8List(headerSize + pcm.length);
  frame.setRange(0, 4, basrMagic);
  frame[4] = framingVersion;
  frame[5] = frameTypeAudio;
  final header = ByteData.sublistView(frame, 0, headerSize);
  header.setUint32(8, seq ~/ 0x100000000, Endian.big);
  header.setUint32(12, seq % 0x100000000, Endian.big);
  frame.setRange(headerSize, frame.length, pcm);
  return frame;
}

/// `(seq, payload)`; the reserved bytes are ignored, as receivers must.
({int seq, Uint8List payload}) decodeFrame(Uint8List data) {
  if (data.length < headerSize) {
    throw const FrameError('frame shorter than the 16-byte header');
  }
  for (var i = 0; i < 4; i++) {
    if (data[i] != basrMagic[i]) {
      throw const FrameError('frame magic is not BASR');
    }
  }
  if (data[4] != framingVersion) {
    throw FrameError('unsupported framing version ${data[4]}');
  }
  if (data[5] != frameTypeAudio) {
    throw FrameError('unsupported frame type ${data[5]}');
  }
  final header = ByteData.sublistView(data, 0, headerSize);
  final seq = header.getUint32(8, Endian.big) * 0x100000000 +
      header.getUint32(12, Endian.big);
  return (seq: seq, payload: Uint8List.sublistView(data, headerSize));
}
