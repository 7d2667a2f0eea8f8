/// PCM16 to WAV, so captured dictation audio can go to the batch endpoint.
library;

import 'dart:typed_data';

import 'framing.dart';

/// A RIFF/WAVE file of mono 16-bit little-endian [pcm], unchanged.
Uint8List wavFromPcm16(List<int> pcm, {int rate = sampleRate}) {
  const header = 44;
  final wav = Uint8List(header + pcm.length);
  final view = ByteData.sublistView(wav);
  void ascii(int offset, String text) => wav.setRange(offset, offset + 4, text.codeUnits);
  ascii(0, 'RIFF');
  view.setUint32(4, 36 + pcm.length, Endian.little);
  ascii(8, 'WAVE');
  ascii(12, 'fmt ');
  view.setUint32(16, 16, Endian.little); // fmt chunk size
  view.setUint16(20, 1, Endian.little); // PCM
  view.setUint16(22, 1, Endian.little); // mono
  view.setUint32(24, rate, Endian.little);
  view.setUint32(28, rate * 2, Endian.little); // byte rate
  view.setUint16(32, 2, Endian.little); // block align
  view.setUint16(34, 16, Endian.little); // bits per sample
  ascii(36, 'data');
  view.setUint32(40, pcm.length, Endian.little);
  wav.setRange(header, wav.length, pcm);
  return wav;
}
