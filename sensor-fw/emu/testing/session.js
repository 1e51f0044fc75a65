'use strict';
// A `run.js run` child process to talk to: send bytes to its UART0, wait for text, collect its
// `emu:` lines and its exit.
const { spawn } = require('child_process');
const path = require('path');

const RUN_JS = path.join(__dirname, '..', 'run.js');

class Session {
  constructor(args) {
    this.child = spawn(process.execPath, [RUN_JS, 'run', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.out = '';
    this.err = '';
    this.waiters = [];
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => resolve({ code, signal })));
    this.child.stdout.on('data', (d) => {
      this.out += d.toString('latin1');
      this.check();
    });
    this.child.stderr.on('data', (d) => {
      this.err += d.toString();
      this.check();
    });
  }
  send(text) {
    this.child.stdin.write(text);
  }
  check() {
    this.waiters = this.waiters.filter((w) => {
      const m = w.stream().slice(w.from).match(w.pattern);
      if (m) w.resolve(m);
      return !m;
    });
  }
  /** Resolves with the first match of `pattern` in stdout (or stderr) after `from`. */
  waitFor(pattern, { stream = 'out', from = 0, timeoutMs = 20000 } = {}) {
    return new Promise((resolve, reject) => {
      const w = { pattern, from, stream: () => this[stream], resolve };
      const timer = setTimeout(() => reject(new Error(`no ${pattern} within ${timeoutMs} ms; stdout ${JSON.stringify(this.out)} stderr ${this.err}`)), timeoutMs);
      w.resolve = (m) => {
        clearTimeout(timer);
        resolve(m);
      };
      this.waiters.push(w);
      this.check();
    });
  }
  /** Sends `command` and waits for the line that answers it. */
  async ask(command, pattern) {
    const from = this.out.length;
    this.send(command);
    return this.waitFor(pattern, { from });
  }
  kill(signal) {
    this.child.kill(signal);
    return this.exited;
  }
}

module.exports = { Session, RUN_JS };
