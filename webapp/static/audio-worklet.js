// Microphone -> 16 kHz mono int16 windows, posted to the page (which sends them over the WebSocket).
// Runs on the audio thread: no allocation per block beyond the outgoing chunk.
const TARGET_RATE = 16000;

class PcmChunker extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.chunkSize = Math.round(TARGET_RATE * (opts.chunkMs || 250) / 1000);
    this.ratio = sampleRate / TARGET_RATE;   // input samples per output sample
    this.buffer = new Int16Array(this.chunkSize);
    this.filled = 0;
    this.pos = 0;          // position of the next output sample, in input samples of the current block
  }

  push(value) {
    const clipped = Math.max(-1, Math.min(1, value));
    this.buffer[this.filled++] = clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff;
    if (this.filled === this.chunkSize) {
      this.port.postMessage(this.buffer.buffer, [this.buffer.buffer]);
      this.buffer = new Int16Array(this.chunkSize);
      this.filled = 0;
    }
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0 || input[0].length === 0) return true;
    const n = input[0].length;
    const channels = input.length;
    const mono = (i) => {
      let s = 0;
      for (let c = 0; c < channels; c++) s += input[c][i];
      return s / channels;
    };
    if (this.ratio === 1) {
      for (let i = 0; i < n; i++) this.push(mono(i));
      return true;
    }
    // Linear interpolation (the browser's own resampler is used instead whenever the
    // AudioContext could be opened at 16 kHz, which Chromium allows).
    while (this.pos < n) {
      const i0 = Math.floor(this.pos);
      const frac = this.pos - i0;
      const a = mono(i0);
      const b = i0 + 1 < n ? mono(i0 + 1) : a;
      this.push(a + (b - a) * frac);
      this.pos += this.ratio;
    }
    this.pos -= n;
    return true;
  }
}

registerProcessor('pcm-chunker', PcmChunker);
