'use strict';
// Runs firmware from a flash file on successive chips: power-on, then a fresh chip after every
// watchdog or SYSRESETREQ reset, the flash (and its file) kept. Paces emulated time against the
// wall clock or skips idle time, stops at limits, cuts the power when asked, reports marks.

const { FlashFile, PowerCut, ResetDuringFlash, FLASH_TIMINGS } = require('./flash-file');
const { SerialFlash } = require('./ssi-flash');
const { SerialLine } = require('./uart');
const { Sht3xSensor } = require('./sht3x');
const { RomShim, RomFault } = require('./rom-shim');
const { createChip, Lockup, WATCHDOG_REASON_TIMER, WATCHDOG_REASON_FORCE } = require('./chip');
const { CHIP_RESET_HAD_POR } = require('./small-blocks');

const EXIT_OK = 0;
const EXIT_FIRMWARE_FAULT = 70;
const EXIT_POWER_CUT = 75;

const MARK_START = 0x70;
const MARK_END = 0x71;
const CHUNK_INSTRUCTIONS = 200000;

/** Register values a reset leaves behind (datasheet 4.7.6 WATCHDOG.REASON, 2.12 CHIP_RESET). */
function resetStateAfter(kind, scratch) {
  switch (kind) {
    case 'power-on':
      return { watchdogReason: 0, scratch: new Uint32Array(8), chipReset: CHIP_RESET_HAD_POR };
    case 'watchdog-timer':
      return { watchdogReason: WATCHDOG_REASON_TIMER, scratch: Uint32Array.from(scratch), chipReset: 0 };
    case 'watchdog-force':
      return { watchdogReason: WATCHDOG_REASON_FORCE, scratch: Uint32Array.from(scratch), chipReset: 0 };
    case 'sysresetreq':
      return { watchdogReason: 0, scratch: Uint32Array.from(scratch), chipReset: 0 };
    default:
      throw new Error(`unknown reset kind ${kind}`);
  }
}

const hex = (n) => `0x${(n >>> 0).toString(16)}`;

class Emulator {
  /**
   * @param {object} o
   * @param {string} o.flashPath
   * @param {Uint8Array} o.uid
   * @param {number} o.baud
   * @param {boolean} o.realtime
   * @param {number} [o.maxSeconds] emulated
   * @param {number} [o.maxCycles]
   * @param {number} [o.cutAfterOps]
   * @param {number} [o.cutAtCycle]
   * @param {number} [o.cutAtReset] cut the power instead of the n-th reset (1: the first)
   * @param {number} [o.afterEofSeconds]
   * @param {{present: boolean, celsius: number, humidity: number}} o.sht3x
   * @param {number} o.chipCelsius
   * @param {'typical' | 'max'} [o.flashTiming] erase/program busy times; instantaneous when absent
   * @param {boolean} [o.logFlash]
   * @param {boolean} [o.verbose]
   * @param {(bytes: Uint8Array) => void} o.output UART0 TX
   * @param {(line: string) => void} o.note one `emu: ` line
   */
  constructor(o) {
    this.o = o;
    this.note = o.note;
    this.flashFile = new FlashFile(o.flashPath, { cutAfterOps: o.cutAfterOps ?? Infinity, timing: o.flashTiming ? FLASH_TIMINGS[o.flashTiming] : null });
    // The core waits in the ROM while the part is busy; the rest of the chip (timers, UART,
    // watchdog) runs on.
    this.flashFile.busy = (nanos) => {
      this.mcu.clock.tick(nanos);
      return this.pendingReset !== null;
    };
    if (o.logFlash) this.flashFile.onOp = (op, kind, offset) => this.note(`flash op ${op} ${kind} ${hex(0x10000000 + offset)}`);
    this.flash = new SerialFlash(this.flashFile, o.uid, this.note);
    this.rom = new RomShim(this.flashFile);
    this.txBuffer = [];
    this.consoleLine = '';
    this.lines = [
      new SerialLine({ baud: o.baud, sink: (b) => this.txBuffer.push(b) }),
      // UART1 is the development console of dev builds: its lines go to stderr.
      new SerialLine({ baud: o.baud, sink: (b) => this.consoleByte(b) }),
    ];
    this.sensor = new Sht3xSensor({ celsius: o.sht3x.celsius, humidity: o.sht3x.humidity });
    this.totalCycles = 0;
    this.baseNanos = 0; // emulated time before the current chip
    this.resets = 0;
    this.pendingReset = null;
    this.markStarts = new Map();
    this.eof = false;
    this.eofDeadline = Infinity;
    this.done = false;
    this.waitTimer = null;
    this.immediate = null;
    this.stopCycles = Math.min(o.maxCycles || Infinity, o.cutAtCycle ?? Infinity);
    this.limitNanos = o.maxSeconds ? o.maxSeconds * 1e9 : Infinity;
  }

  consoleByte(b) {
    if (b === 0x0a) {
      this.note(`uart1: ${this.consoleLine}`);
      this.consoleLine = '';
    } else if (b !== 0x0d && this.consoleLine.length < 512) {
      this.consoleLine += b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`;
    }
  }

  get emulatedNanos() {
    return this.baseNanos + this.mcu.clock.nanos;
  }

  wallNanos() {
    return Number(process.hrtime.bigint() - this.wallStart);
  }

  /** Starts at power-on; resolves with the exit code. */
  run() {
    this.wallStart = process.hrtime.bigint();
    this.note(
      `power-on flash=${this.o.flashPath} size=${this.flashFile.size} uid=${Buffer.from(this.o.uid).toString('hex')} ` +
        `baud=${this.o.baud || 'unlimited'} time=${this.o.realtime ? 'realtime' : 'batch'}`,
    );
    this.boot(resetStateAfter('power-on'));
    return new Promise((resolve) => {
      this.resolve = resolve;
      this.schedule(0);
    });
  }

  boot(resetState) {
    const chip = createChip({
      flash: this.flash,
      rom: this.rom,
      lines: this.lines,
      sensor: this.sensor,
      options: { present: this.o.sht3x.present, chipCelsius: this.o.chipCelsius, verbose: !!this.o.verbose },
      resetState,
      requestReset: (kind) => {
        if (!this.pendingReset) this.pendingReset = kind;
      },
      note: this.note,
      onBreak: (code, pc) => this.onBreak(code, pc),
    });
    this.mcu = chip.mcu;
    this.watchdog = chip.watchdog;
  }

  reset(kind) {
    const scratch = this.watchdog.scratchData;
    this.note(`reset ${kind} at cycle ${this.totalCycles} (${(this.emulatedNanos / 1e9).toFixed(6)} s)`);
    this.baseNanos = this.emulatedNanos;
    this.resets++;
    this.markStarts.clear();
    this.flash.deselect();
    this.sensor.pending = null; // the sensor's timing was kept on the old chip's clock
    this.sensor.output = null;
    this.boot(resetStateAfter(kind, scratch));
  }

  /** A BKPT or UDF in the firmware: benchmark marks, or a stop. */
  onBreak(code, pc) {
    const core = this.mcu.core;
    const r = core.registers;
    if (code === MARK_START && this.isBkpt(pc)) {
      this.markStarts.set(r[0] >>> 0, this.totalCycles + 1); // + the BKPT's own cycle
      return;
    }
    if (code === MARK_END && this.isBkpt(pc)) {
      const tag = r[0] >>> 0;
      const start = this.markStarts.get(tag);
      if (start === undefined) this.note(`mark ${tag} end without a start (PC ${hex(pc)})`);
      else this.note(`mark ${tag} cycles=${this.totalCycles - start} value=${r[1] >>> 0}`);
      return;
    }
    const what = this.isBkpt(pc) ? `BKPT #${hex(code)}` : `UDF #${hex(code)} (a Rust panic or abort)`;
    throw new Lockup(`${what} at PC ${hex(pc)} (LR ${hex(core.LR)})`);
  }

  isBkpt(pc) {
    return this.mcu.readUint16(pc) >> 8 === 0xbe;
  }

  /** Bytes from the host for UART0. */
  input(bytes) {
    this.lines[0].send(bytes);
    this.wake();
  }

  /** The host closed its end: stop once everything sent has been received (+ afterEofSeconds). */
  endOfInput() {
    this.eof = true;
    this.wake();
  }

  /** Runs the next chunk now instead of after a pacing/idle wait. */
  wake() {
    if (this.done || !this.waitTimer) return;
    clearTimeout(this.waitTimer);
    this.waitTimer = null;
    this.schedule(0);
  }

  schedule(ms) {
    if (this.done || this.waitTimer || this.immediate) return;
    if (ms > 0) this.waitTimer = setTimeout(() => this.chunk(), ms);
    else this.immediate = setImmediate(() => this.chunk());
  }

  finish(code, message) {
    if (this.done) return;
    this.done = true;
    this.flushOutput();
    if (message) this.note(message);
    if (this.o.stats) this.note(this.statsLine());
    this.flashFile.close();
    this.resolve(code);
  }

  statsLine() {
    const wall = this.wallNanos() / 1e9;
    const emulated = this.emulatedNanos / 1e9;
    const f = this.flashFile;
    return (
      `stats cycles=${this.totalCycles} emulated=${emulated.toFixed(3)}s wall=${wall.toFixed(3)}s ` +
      `mhz=${(this.totalCycles / wall / 1e6).toFixed(1)} resets=${this.resets} ` +
      `flash-ops=${f.ops} (${f.erases} sector erases, ${f.programs} page programs) ` +
      `uart0 tx=${this.lines[0].txBytes} rx=${this.lines[0].rxBytes}`
    );
  }

  flushOutput() {
    if (!this.txBuffer.length) return;
    const bytes = Uint8Array.from(this.txBuffer);
    this.txBuffer = [];
    this.o.output(bytes);
  }

  timeLimit() {
    if (this.eof && this.lines[0].pendingCount === 0 && this.eofDeadline === Infinity) {
      this.eofDeadline = this.emulatedNanos + (this.o.afterEofSeconds || 0) * 1e9;
    }
    return Math.min(this.limitNanos, this.eofDeadline);
  }

  chunk() {
    this.waitTimer = null;
    this.immediate = null;
    if (this.done) return;
    try {
      this.step();
    } catch (e) {
      this.flushOutput();
      if (e instanceof PowerCut) return this.finish(EXIT_POWER_CUT, e.message);
      if (e instanceof ResetDuringFlash) {
        this.note(e.message);
        return this.schedule(0); // the pending reset happens first thing in the next chunk
      }
      if (e instanceof RomFault) return this.finish(EXIT_FIRMWARE_FAULT, `ROM call at LR ${hex(this.mcu.core.LR)} failed: ${e.message}`);
      if (e instanceof Lockup) return this.finish(EXIT_FIRMWARE_FAULT, `firmware stopped: ${e.message}`);
      throw e;
    }
  }

  /** Runs up to CHUNK_INSTRUCTIONS, then yields to the event loop (input, signals, timers). */
  step() {
    const realtime = this.o.realtime;
    const wallNow = realtime ? this.wallNanos() : Infinity;
    const limit = this.timeLimit();
    let mcu = this.mcu;
    let core = mcu.core;
    let clock = mcu.clock;
    let waitMs = 0;
    for (let i = 0; i < CHUNK_INSTRUCTIONS; i++) {
      if (this.pendingReset) {
        const kind = this.pendingReset;
        this.pendingReset = null;
        // The power goes as the chip resets (e.g. into the bootloader's swap): the flash is
        // exactly what the last boot left.
        if (this.o.cutAtReset !== undefined && this.resets + 1 >= this.o.cutAtReset) {
          return this.finish(EXIT_POWER_CUT, `power cut at reset ${this.resets + 1} (${kind}) at cycle ${this.totalCycles}`);
        }
        this.reset(kind);
        mcu = this.mcu;
        core = mcu.core;
        clock = mcu.clock;
      }
      const now = this.baseNanos + clock.nanos;
      if (now >= limit) {
        return this.finish(EXIT_OK, now >= this.limitNanos ? `stopped after ${this.o.maxSeconds} emulated seconds` : 'input closed');
      }
      if (core.waiting) {
        // Idle (WFI/WFE): skip to the next alarm, no further than the limits and the wall clock.
        const toAlarm = clock.nextAlarm ? Math.max(0, clock.nextAlarm.nanos - clock.nanos) : Infinity;
        const cap = Math.min(limit, wallNow) - now;
        if (Number.isFinite(toAlarm) && toAlarm <= cap) {
          clock.tick(toAlarm);
          continue;
        }
        if (Number.isFinite(cap)) {
          if (cap > 0) clock.tick(cap); // up to the wall clock or the time limit
          if (now + cap >= limit) continue;
        }
        // Nothing to do until the wall clock catches up or (no alarm at all) input arrives.
        waitMs = realtime ? Math.min(20, Math.max(1, Math.floor(Math.min(toAlarm - cap, 20e6) / 1e6))) : 50;
        break;
      }
      const cycles = core.executeInstruction();
      this.totalCycles += cycles;
      clock.tick((cycles * 1e9) / mcu.clkSys);
      if (this.totalCycles >= this.stopCycles) {
        if (this.o.cutAtCycle !== undefined && this.totalCycles >= this.o.cutAtCycle) {
          return this.finish(EXIT_POWER_CUT, `power cut at cycle ${this.totalCycles}`);
        }
        return this.finish(EXIT_OK, `stopped after ${this.totalCycles} cycles`);
      }
      if (this.baseNanos + clock.nanos > wallNow) {
        waitMs = 1;
        break;
      }
    }
    this.flushOutput();
    this.schedule(waitMs);
  }
}

module.exports = { Emulator, resetStateAfter, Lockup, EXIT_OK, EXIT_FIRMWARE_FAULT, EXIT_POWER_CUT };
