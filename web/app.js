// polyasr in the browser: live dictation over WS /ws/transcribe (BASR frames,
// control protocol v2) and file transcription with a word timeline over HTTP,
// speakers coloured on it when asked for (/v1/align with diarize=true).
// Plain modules, no build step, no framework.

const $ = (id) => document.getElementById(id);
const languageInput = $("language");
languageInput.value = new URLSearchParams(location.search).get("language") ?? "";
const language = () => languageInput.value.trim();

// The server's POLYASR_API_KEY, if it has one: kept in this browser only.
// HTTP sends it as a Bearer header; a WebSocket cannot carry headers, so it is
// offered as the subprotocol "polyasr-key.<key>" beside "polyasr" (echoed).
const KEY_STORAGE = "polyasr.apiKey";
const keyInput = $("api-key");
keyInput.value = localStorage.getItem(KEY_STORAGE) ?? "";
keyInput.addEventListener("change", () => {
  const key = keyInput.value.trim();
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
});
const apiKey = () => keyInput.value.trim();
const authHeaders = () => (apiKey() ? { Authorization: `Bearer ${apiKey()}` } : {});
const socketProtocols = () => (apiKey() ? ["polyasr", `polyasr-key.${apiKey()}`] : []);

const SAMPLE_RATE = 16000;

// Browsers give the microphone (and crypto.randomUUID) only to secure
// contexts: https pages and localhost. Over plain http on a LAN the page still
// transcribes files; the Start button says why dictation is off.
const MIC_UNAVAILABLE =
  "The microphone needs https or localhost: open this page over https, or through an SSH tunnel " +
  "(ssh -L PORT:localhost:PORT host, then http://localhost:PORT/). File transcription works here.";
const micAvailable = () => window.isSecureContext && Boolean(navigator.mediaDevices?.getUserMedia);

/** A random hex id (crypto.getRandomValues works in every context). */
function randomId() {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---- wire formats --------------------------------------------------------

/** One BASR audio frame: a 16-byte header (seq big-endian), then PCM16 little-endian. */
function basrFrame(seq, pcm) {
  const view = new DataView(new ArrayBuffer(16 + pcm.length * 2));
  [..."BASR"].forEach((c, i) => view.setUint8(i, c.charCodeAt(0)));
  view.setUint8(4, 1); // framing version
  view.setUint8(5, 1); // frame type: audio
  view.setUint16(6, 0); // reserved
  view.setBigUint64(8, BigInt(seq)); // DataView defaults to big-endian
  pcm.forEach((sample, i) => view.setInt16(16 + 2 * i, sample, true));
  return view.buffer;
}

/** 16 kHz mono PCM16 chunks as a WAV file, for the batch endpoint. */
function wavFile(chunks, name) {
  const samples = chunks.reduce((n, chunk) => n + chunk.length, 0);
  const view = new DataView(new ArrayBuffer(44 + samples * 2));
  const ascii = (at, text) => [...text].forEach((c, i) => view.setUint8(at + i, c.charCodeAt(0)));
  ascii(0, "RIFF");
  view.setUint32(4, 36 + samples * 2, true);
  ascii(8, "WAVEfmt ");
  view.setUint32(16, 16, true); // fmt chunk size
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, SAMPLE_RATE, true);
  view.setUint32(28, SAMPLE_RATE * 2, true); // bytes per second
  view.setUint16(32, 2, true); // bytes per frame
  view.setUint16(34, 16, true); // bits per sample
  ascii(36, "data");
  view.setUint32(40, samples * 2, true);
  let at = 44;
  for (const chunk of chunks) {
    for (const sample of chunk) {
      view.setInt16(at, sample, true);
      at += 2;
    }
  }
  return new File([view.buffer], name, { type: "audio/wav" });
}

/** POST a multipart form; empty fields are left out. */
async function postForm(path, fields) {
  const body = new FormData();
  for (const [key, value] of Object.entries(fields)) if (value) body.append(key, value);
  const response = await fetch(path, { method: "POST", body, headers: authHeaders() });
  const data = await response.json().catch(() => ({}));
  return { response, data };
}

function failure({ response, data }) {
  const detail = typeof data.detail === "string" ? data.detail : response.statusText;
  return `HTTP ${response.status}: ${detail}`;
}

function socketUrl() {
  const url = new URL("ws/transcribe", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = "";
  return url;
}

// ---- dictation -------------------------------------------------------------

/**
 * One utterance: microphone → worklet (16 kHz PCM16, 100 ms chunks) → BASR
 * frames → server. Chunk i is frame seq i, and every chunk is kept, so a
 * final that does not cover the audio can be redone by the batch endpoint.
 */
class Dictation {
  sessionId = `web-${randomId()}`;
  stopId = `${this.sessionId}-stop`;
  chunks = [];
  sent = 0; // frames handed to the socket
  ackSeq = -1;
  started = false; // the server answered `started`
  captureDone = false; // Stop pressed and the worklet flushed its last chunk
  stopSent = false;
  partial = "";
  final = null; // the `final` message, or {text} from the batch recovery
  state = "connecting"; // listening, finishing, done, recovering, recovered, error
  note = "";

  async open() {
    if (!micAvailable()) throw new Error(MIC_UNAVAILABLE);
    this.media = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
    this.audio = new AudioContext();
    await this.audio.audioWorklet.addModule("web/pcm-worklet.js");
    await this.audio.resume();
    this.worklet = new AudioWorkletNode(this.audio, "pcm16-capture", { numberOfOutputs: 0 });
    this.flushed = new Promise((resolve) => {
      this.worklet.port.onmessage = ({ data }) => {
        if (this.captureDone) return;
        if (data.pcm.length > 0) this.chunks.push(data.pcm);
        if (data.last) {
          this.captureDone = true;
          resolve();
        }
        this.pump();
      };
    });
    this.audio.createMediaStreamSource(this.media).connect(this.worklet);

    this.ws = new WebSocket(socketUrl(), socketProtocols());
    this.ws.onopen = () => {
      const start = { type: "start", protocol: 1, control: 2, sessionId: this.sessionId };
      Object.assign(start, { sampleRate: SAMPLE_RATE, channels: 1, encoding: "pcm16le" });
      if (language()) start.language = language();
      this.ws.send(JSON.stringify(start));
    };
    this.ws.onmessage = ({ data }) => this.receive(JSON.parse(data));
    this.ws.onclose = () => this.closed();
  }

  async stop() {
    this.state = "finishing";
    render();
    this.worklet.port.postMessage("flush");
    await this.flushed;
    this.release();
    this.pump();
  }

  /** Send the frames the socket has not had yet, then the stop once capture is over. */
  pump() {
    if (!this.started || this.ws.readyState !== WebSocket.OPEN) return;
    for (; this.sent < this.chunks.length; this.sent++) {
      this.ws.send(basrFrame(this.sent, this.chunks[this.sent]));
    }
    if (this.captureDone && !this.stopSent) {
      this.stopSent = true;
      this.ws.send(
        JSON.stringify({
          type: "stop",
          protocol: 1,
          sessionId: this.sessionId,
          stopId: this.stopId,
          finalCapturedSeq: this.chunks.length, // exclusive count of captured frames
        }),
      );
    }
    render();
  }

  receive(message) {
    switch (message.type) {
      case "started":
        this.started = true;
        if (this.state === "connecting") this.state = "listening";
        this.pump();
        break;
      case "ack":
        this.ackSeq = message.ackSeq;
        break;
      case "partial": // append the delta; no delta means the text was rewritten
        this.partial = "delta" in message ? this.partial + message.delta : message.partial;
        break;
      case "final":
        this.final = message;
        break;
      case "done":
        this.state = "done";
        if (!this.covered()) this.recover("the final did not cover all captured audio");
        break;
      case "stopExpired":
        this.recover(`the server no longer had the result (${message.reason})`);
        break;
      case "error":
        this.fail(`${message.code}: ${message.error}`);
        break;
    }
    render();
  }

  /** Protocol v2: the final covers the utterance iff recognizedThroughSeq ≥ finalCapturedSeq. */
  covered() {
    const through = this.final?.recognizedThroughSeq;
    return Number.isInteger(through) && through >= this.chunks.length;
  }

  closed() {
    if (["connecting", "listening", "finishing"].includes(this.state)) {
      if (this.chunks.length > 0) this.recover("the connection closed before the final");
      else this.fail("the connection closed");
    }
  }

  /** Redo the utterance from the kept audio through POST /v1/audio/transcriptions. */
  async recover(reason) {
    this.state = "recovering";
    this.note = `${reason}; recovering through the batch endpoint…`;
    this.release();
    render();
    const file = wavFile(this.chunks, `${this.sessionId}.wav`);
    try {
      const result = await postForm("v1/audio/transcriptions", { file, language: language() });
      if (!result.response.ok) throw new Error(failure(result));
      this.final = { text: result.data.text };
      this.state = "recovered";
      this.note = `${reason}; recovered through POST /v1/audio/transcriptions.`;
    } catch (err) {
      this.fail(`${reason}; recovery failed: ${err.message}`);
    }
    render();
  }

  fail(note) {
    this.state = "error";
    this.note = note;
    this.release();
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.close();
    render();
  }

  release() {
    if (this.released) return;
    this.released = true;
    this.media?.getTracks().forEach((track) => track.stop());
    this.audio?.close();
  }
}

let current = null;

function statusLine(d) {
  const frames = `${d.sent} frames sent, ${d.ackSeq + 1} acknowledged`;
  switch (d.state) {
    case "connecting":
      return "Connecting…";
    case "listening":
      return `Listening — ${frames}.`;
    case "finishing":
      return `Finishing — ${frames}; waiting for the final.`;
    case "done":
      return `Done — ${d.chunks.length} frames, ${(d.chunks.length / 10).toFixed(1)} s of audio.`;
    default:
      return d.note;
  }
}

function coverageLine(d) {
  if (d.state === "recovering" || d.state === "recovered") return d.note;
  if (!d.final) return "";
  const through = d.final.recognizedThroughSeq ?? "absent";
  return d.covered()
    ? `Covered: recognizedThroughSeq ${through} ≥ finalCapturedSeq ${d.chunks.length}.`
    : `Not covered: recognizedThroughSeq ${through}, finalCapturedSeq ${d.chunks.length}.`;
}

function render() {
  const d = current;
  const busy = d !== null && ["connecting", "listening", "finishing", "recovering"].includes(d.state);
  document.body.dataset.dictation = d?.state ?? (micAvailable() ? "idle" : "unavailable");
  $("start").disabled = busy || !micAvailable();
  $("stop").disabled = d?.state !== "listening"; // capture is running once the server has started
  if (!d) return;
  const status = $("dictation-status");
  status.textContent = statusLine(d);
  status.classList.toggle("error", d.state === "error");
  $("partial").textContent = d.final ? "" : d.partial;
  $("final").textContent = d.final?.text ?? "";
  $("coverage").textContent = coverageLine(d);
  $("coverage").dataset.covered = String(d.final !== null && d.covered());
}

$("start").addEventListener("click", async () => {
  current = new Dictation();
  render();
  try {
    await current.open();
  } catch (err) {
    current.fail(`could not start: ${err.message}`);
  }
});

$("stop").addEventListener("click", () => current.stop());

if (!micAvailable()) {
  $("start").title = MIC_UNAVAILABLE;
  $("dictation-status").textContent = MIC_UNAVAILABLE;
  render();
}

// ---- file upload: transcript and word timeline ------------------------------

function element(tag, className, text = "") {
  const node = document.createElement(tag);
  node.className = className;
  node.textContent = text;
  return node;
}

const seconds = (t) => t.toFixed(2);

// Speakers' colours, in order of first appearance (A, B, … or known names).
const SPEAKER_COLOURS = ["#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2", "#65a30d", "#dc2626"];

function speakerColours(turns) {
  const colours = new Map();
  for (const { speaker } of turns) {
    if (!colours.has(speaker)) colours.set(speaker, SPEAKER_COLOURS[colours.size % SPEAKER_COLOURS.length]);
  }
  return colours;
}

/** Who spoke when: one track over the whole file, a coloured block per turn. */
function renderSpeakers(turns, colours) {
  if (!turns.length) return;
  const end = Math.max(...turns.map((turn) => turn.end), 0.001);
  const legend = element("div", "segment-head", `${colours.size} speaker(s): `);
  for (const [speaker, colour] of colours) {
    const name = element("span", "speaker-name", speaker);
    name.style.color = colour;
    legend.append(name);
  }
  const track = element("div", "track");
  for (const turn of turns) {
    const block = element("span", "turn", turn.speaker);
    block.dataset.speaker = turn.speaker;
    block.style.left = `${(turn.start / end) * 100}%`;
    block.style.width = `${((turn.end - turn.start) / end) * 100}%`;
    block.style.background = colours.get(turn.speaker);
    block.title = `${turn.speaker}: ${seconds(turn.start)}–${seconds(turn.end)} s`;
    track.append(block);
  }
  $("speakers").append(legend, track);
}

/** One track per segment; each word sits at its aligned start, as wide as it
 * lasts, in its speaker's colour when the segments carry speakers. */
function renderTimeline(segments, turns = []) {
  const timeline = $("timeline");
  const colours = speakerColours(turns);
  renderSpeakers(turns, colours);
  const words = segments.flatMap((segment) => segment.words ?? []);
  $("align-status").textContent = words.length
    ? `${words.length} words in ${segments.length} segment(s); hover a word for its times.`
    : "The aligner returned no words.";
  for (const segment of segments) {
    const span = Math.max(segment.end - segment.start, 0.001);
    const box = element("div", "segment");
    const who = segment.speaker ? `${segment.speaker} · ` : "";
    const head = element("div", "segment-head", `${who}${seconds(segment.start)}–${seconds(segment.end)} s · ${segment.text}`);
    const colour = colours.get(segment.speaker);
    if (colour) {
      box.dataset.speaker = segment.speaker;
      box.style.setProperty("--speaker", colour);
      head.style.color = colour;
    }
    box.append(head);
    const track = element("div", "track");
    for (const word of segment.words ?? []) {
      const block = element("span", "word", word.text);
      block.style.left = `${((word.start - segment.start) / span) * 100}%`;
      block.style.width = `${((word.end - word.start) / span) * 100}%`;
      block.title = `${word.text}: ${seconds(word.start)}–${seconds(word.end)} s`;
      track.append(block);
    }
    box.append(track);
    timeline.append(box);
  }
}

async function align(file, diarize) {
  const status = $("align-status");
  status.textContent = diarize ? "Aligning and telling speakers apart…" : "Aligning…";
  const result = await postForm("v1/align", { file, language: language(), diarize: diarize ? "true" : "" });
  if (result.response.status === 404) {
    status.textContent = "This server has no forced alignment yet (POST /v1/align answered 404).";
  } else if (!result.response.ok) {
    status.textContent = `Alignment failed: ${failure(result)}`;
  } else {
    renderTimeline(result.data.segments ?? [], result.data.turns ?? []);
  }
}

$("upload-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = $("file").files[0];
  const status = $("upload-status");
  // a failed upload must not leave the previous file's result on show
  for (const id of ["batch-text", "batch-meta", "align-status", "speakers", "timeline"]) $(id).replaceChildren();
  document.body.dataset.upload = "busy";
  status.classList.remove("error");
  status.textContent = "Transcribing…";
  try {
    const result = await postForm("v1/audio/transcriptions", {
      file,
      language: language(),
      response_format: "verbose_json",
    });
    if (!result.response.ok) throw new Error(failure(result));
    const { text, language: detected, duration } = result.data;
    $("batch-text").textContent = text || "(no speech recognized)";
    $("batch-meta").textContent = `${detected ?? "language not detected"} · ${seconds(duration)} s of audio`;
    status.textContent = "";
    await align(file, $("diarize").checked);
    status.textContent = "Done.";
  } catch (err) {
    status.textContent = `Failed: ${err.message}`;
    status.classList.add("error");
  }
  document.body.dataset.upload = "done";
});

// ---- server identity --------------------------------------------------------

fetch("health", { headers: authHeaders() })
  .then((response) => response.json())
  .then((health) => {
    $("server").textContent = `${health.backend} · ${health.model} · ${health.status}`;
  })
  .catch(() => {
    $("server").textContent = "server unreachable";
  });
