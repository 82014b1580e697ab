// The alarm: a two-tone beep made with WebAudio while an alert is firing, unacknowledged and
// not muted (SmartPing loops an alert.mp3 on its topology page; here nothing is fetched).
//
// Browsers start an AudioContext only after a user gesture, so the sound must be switched on
// once by a click (the choice is remembered); until then the header shows why it is silent.
// State for people and tests: <body data-sound="off|armed|blocked|playing">.

const BEEP_S = 0.18;
const PERIOD_MS = 1200;

export class Alarm {
  constructor(button) {
    this.button = button;
    this.wanted = localStorage.getItem("pingmesh.sound") !== "0";
    this.context = null;
    this.active = false;
    this.timer = null;
    this.beeps = 0;
    button.addEventListener("click", () => this.toggle());
    // Any click on the page is a gesture that lets a waiting context start.
    document.addEventListener("click", () => this.resume(), { capture: true });
    this.render();
  }

  toggle() {
    // Wanted but held by the browser: this click is the gesture that lets it play.
    if (this.wanted && (!this.context || this.context.state !== "running")) {
      this.resume();
      return;
    }
    this.wanted = !this.wanted;
    localStorage.setItem("pingmesh.sound", this.wanted ? "1" : "0");
    if (this.wanted) this.ensureContext();
    this.sync();
  }

  ensureContext() {
    if (this.context) return;
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) return;
    this.context = new Context();
    this.context.addEventListener("statechange", () => this.render());
  }

  resume() {
    if (!this.wanted) return;
    this.ensureContext();
    if (this.context && this.context.state === "suspended") {
      this.context.resume().then(() => this.sync(), () => this.render());
    }
  }

  // Called by the poller: should the alarm sound now?
  set(active) {
    this.active = active;
    this.sync();
  }

  sync() {
    const run = this.active && this.wanted && this.context && this.context.state === "running";
    if (run && this.timer === null) {
      this.beep();
      this.timer = setInterval(() => this.beep(), PERIOD_MS);
    } else if (!run && this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
    }
    if (this.active && this.wanted && !this.context) this.ensureContext();
    this.render();
  }

  beep() {
    const ctx = this.context;
    const now = ctx.currentTime;
    for (const [offset, hz] of [[0, 880], [BEEP_S + 0.06, 660]]) {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.type = "square";
      osc.frequency.value = hz;
      gain.gain.setValueAtTime(0.0001, now + offset);
      gain.gain.exponentialRampToValueAtTime(0.08, now + offset + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, now + offset + BEEP_S);
      osc.connect(gain).connect(ctx.destination);
      osc.start(now + offset);
      osc.stop(now + offset + BEEP_S + 0.02);
    }
    this.beeps += 1;
    document.body.dataset.beeps = String(this.beeps);
  }

  render() {
    let state;
    if (!this.wanted) state = "off";
    else if (this.timer !== null) state = "playing";
    else if (this.active && (!this.context || this.context.state !== "running")) state = "blocked";
    else state = "armed";
    document.body.dataset.sound = state;
    const text = {
      off: "sound off",
      armed: "sound on",
      playing: "ALARM",
      blocked: "click to allow sound",
    }[state];
    this.button.textContent = text;
    this.button.dataset.state = state;
    this.button.title = state === "blocked"
      ? "The browser holds sound until you click: click here to hear the alarm"
      : "Play a sound while an alert fires (unacknowledged, not muted)";
  }
}
