// AudioWorklet processor: microphone audio in, 16 kHz mono PCM16 out, in
// 100 ms chunks posted to the page (which frames and sends them).
//
// It runs on the audio thread at the context's own rate (`sampleRate`,
// usually 44.1 or 48 kHz), so the resampling happens here: each output sample
// is the mean of the input samples it spans. That box filter is a crude
// low-pass, but enough to keep 48 kHz speech from aliasing into the 8 kHz
// band the model hears. Below 16 kHz (rare) samples are held, not invented.

const TARGET_RATE = 16000;
const CHUNK = 1600; // 100 ms at 16 kHz: one BASR frame

class Pcm16Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / TARGET_RATE; // input samples per output sample
    this.consumed = 0; // input samples seen
    this.boundary = this.step; // input position where the current output sample ends
    this.sum = 0;
    this.count = 0;
    this.held = 0;
    this.chunk = new Int16Array(CHUNK);
    this.filled = 0;
    // "flush": post what is buffered (possibly nothing) as the last chunk.
    this.port.onmessage = () => this.post(true);
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels.length === 0) return true; // input not connected yet
    for (let i = 0; i < channels[0].length; i++) {
      let mono = 0;
      for (const channel of channels) mono += channel[i];
      this.sum += mono / channels.length;
      this.count += 1;
      this.consumed += 1;
      while (this.consumed >= this.boundary) {
        if (this.count > 0) this.held = this.sum / this.count;
        this.push(this.held);
        this.sum = 0;
        this.count = 0;
        this.boundary += this.step;
      }
    }
    return true;
  }

  push(sample) {
    this.chunk[this.filled++] = Math.round(Math.max(-1, Math.min(1, sample)) * 32767);
    if (this.filled === CHUNK) this.post(false);
  }

  post(last) {
    const pcm = this.chunk.slice(0, this.filled);
    this.port.postMessage({ pcm, last }, [pcm.buffer]);
    this.filled = 0;
  }
}

registerProcessor("pcm16-capture", Pcm16Capture);
