'use strict';
// UART (ARM PL011 as in the RP2040) with a serial line of a given speed, replacing rp2040js
// 1.4.1's RPUART, whose TX is instantaneous and which
//  * reads unimplemented registers as 0xFFFFFFFF: UARTDMACR then reads RXDMAE=1 and embassy-rp's
//    BufferedUart interrupt handler returns at once (an interrupt storm, no output); here
//    RSR/ECR, ILPR, IFLS and DMACR are plain registers;
//  * re-asserts TXRIS on every interrupt check (level), so an enabled TXIM fires forever; here
//    TXRIS is set when the TX FIFO drains through its trigger level, as the PL011 TRM describes.
//
// TX: bytes written to UARTDR go into a 32-entry FIFO (1 entry with FEN clear); the shift
// register takes one at a time and puts it on the line after 10 bit times (8N1) at the line's
// baud rate. UARTFR.TXFF is set while the FIFO is full, BUSY while anything is left to send.
// RX: bytes from the host wait in an unbounded queue (never dropped) and enter the 32-entry RX
// FIFO no faster than the line allows and only while it has room. RXRIS follows the RX trigger
// level, RTRIS (receive timeout) is set when data has sat in the FIFO for 32 bit times.
// Baud 0 means an unlimited line: bytes move at once.

const { BasePeripheral } = require('rp2040js');

const DR = 0x00;
const RSR = 0x04;
const FR = 0x18;
const ILPR = 0x20;
const IBRD = 0x24;
const FBRD = 0x28;
const LCR_H = 0x2c;
const CR = 0x30;
const IFLS = 0x34;
const IMSC = 0x38;
const RIS = 0x3c;
const MIS = 0x40;
const ICR = 0x44;
const DMACR = 0x48;
const PERIPH_ID = { 0xfe0: 0x11, 0xfe4: 0x10, 0xfe8: 0x34, 0xfec: 0x00, 0xff0: 0x0d, 0xff4: 0xf0, 0xff8: 0x05, 0xffc: 0xb1 };

// UARTFR
const FR_BUSY = 1 << 3;
const FR_RXFE = 1 << 4;
const FR_TXFF = 1 << 5;
const FR_RXFF = 1 << 6;
const FR_TXFE = 1 << 7;
// UARTCR
const CR_UARTEN = 1 << 0;
const CR_TXE = 1 << 8;
const CR_RXE = 1 << 9;
// UARTLCR_H
const LCR_FEN = 1 << 4;
// interrupt bits
const INT_RX = 1 << 4;
const INT_TX = 1 << 5;
const INT_RT = 1 << 6;

const FIFO_DEPTH = 32;
/** Trigger levels selected by IFLS (1/8, 1/4, 1/2, 3/4, 7/8 of 32). */
const LEVELS = [4, 8, 16, 24, 28];
const NOMINAL_BAUD = 115200;

/** The host side of a UART: bytes waiting to be received, a sink for bytes sent, the line speed. */
class SerialLine {
  /** @param {{baud: number, sink: (byte: number) => void}} options */
  constructor({ baud, sink }) {
    this.baud = baud;
    this.sink = sink;
    /** Bytes from the host not yet received by the chip; survives chip resets. */
    this.pending = [];
    this.pendingHead = 0;
    this.uart = null;
    this.txBytes = 0;
    this.rxBytes = 0;
  }

  get byteNanos() {
    return this.baud ? 10e9 / this.baud : 0;
  }

  get pendingCount() {
    return this.pending.length - this.pendingHead;
  }

  send(bytes) {
    for (const b of bytes) this.pending.push(b);
    if (this.uart) this.uart.pumpRx();
  }

  peekPending() {
    return this.pending[this.pendingHead];
  }

  takePending() {
    const b = this.pending[this.pendingHead++];
    if (this.pendingHead > 4096 && this.pendingHead * 2 > this.pending.length) {
      this.pending = this.pending.slice(this.pendingHead);
      this.pendingHead = 0;
    }
    this.rxBytes++;
    return b;
  }
}

class Pl011 extends BasePeripheral {
  /**
   * @param rp2040 the chip
   * @param {string} name
   * @param {number} irq
   * @param {{tx: number, rx: number}} dreq
   * @param {SerialLine} line
   * @param {(message: string) => void} [note] for one-off remarks (baud mismatch)
   */
  constructor(rp2040, name, irq, dreq, line, note = () => {}) {
    super(rp2040, name);
    this.irq = irq;
    this.dreq = dreq;
    this.line = line;
    this.note = note;
    line.uart = this;
    this.cr = CR_TXE | CR_RXE;
    this.lcrH = 0;
    this.ibrd = 0;
    this.fbrd = 0;
    this.ifls = 0x12;
    this.imsc = 0;
    this.ris = 0;
    this.dmacr = 0;
    this.ilpr = 0;
    this.txFifo = [];
    this.rxFifo = [];
    this.shifting = false;
    this.txAtOrBelowLevel = true;
    this.wireFreeNanos = 0;
    this.baudChecked = false;
    const clock = rp2040.clock;
    this.txAlarm = clock.createAlarm(() => this.txDone());
    this.rxAlarm = clock.createAlarm(() => this.rxArrived());
    this.rxScheduled = false;
    this.timeoutAlarm = clock.createAlarm(() => this.rxTimeout());
  }

  get depth() {
    return this.lcrH & LCR_FEN ? FIFO_DEPTH : 1;
  }
  get txLevel() {
    return this.lcrH & LCR_FEN ? LEVELS[Math.min(this.ifls & 7, 4)] : 0;
  }
  get rxLevel() {
    return this.lcrH & LCR_FEN ? LEVELS[Math.min((this.ifls >> 3) & 7, 4)] : 1;
  }
  get txRunning() {
    return (this.cr & (CR_UARTEN | CR_TXE)) === (CR_UARTEN | CR_TXE);
  }
  get rxRunning() {
    return (this.cr & (CR_UARTEN | CR_RXE)) === (CR_UARTEN | CR_RXE);
  }
  /** The baud rate the firmware programmed (UARTCLK / (16 * divisor)), 0 before it did. */
  get programmedBaud() {
    const divisor = this.ibrd + this.fbrd / 64;
    return divisor ? Math.round(this.rp2040.clkPeri / (16 * divisor)) : 0;
  }
  /** rp2040js calls this when clk_peri changes; the line's speed is set by --baud, not by clk_peri. */
  clkPeriChanged() {}

  get flags() {
    return (
      (this.txFifo.length === 0 ? FR_TXFE : 0) |
      (this.rxFifo.length >= this.depth ? FR_RXFF : 0) |
      (this.txFifo.length >= this.depth ? FR_TXFF : 0) |
      (this.rxFifo.length === 0 ? FR_RXFE : 0) |
      (this.shifting || this.txFifo.length ? FR_BUSY : 0)
    );
  }

  updateInterrupt() {
    this.rp2040.setInterrupt(this.irq, !!(this.ris & this.imsc));
    this.rp2040.dma[this.txFifo.length < this.depth ? 'setDREQ' : 'clearDREQ'](this.dreq.tx);
    this.rp2040.dma[this.rxFifo.length ? 'setDREQ' : 'clearDREQ'](this.dreq.rx);
  }

  /** TXRIS is set when the TX FIFO level passes down through the trigger level. */
  txLevelChanged() {
    const atOrBelow = this.txFifo.length <= this.txLevel;
    if (atOrBelow && !this.txAtOrBelowLevel) this.ris |= INT_TX;
    if (!atOrBelow) this.ris &= ~INT_TX;
    this.txAtOrBelowLevel = atOrBelow;
  }

  rxLevelChanged() {
    if (this.rxFifo.length >= this.rxLevel) this.ris |= INT_RX;
    else this.ris &= ~INT_RX;
    if (!this.rxFifo.length) this.ris &= ~INT_RT;
  }

  checkBaud() {
    if (this.baudChecked || !this.line.baud || !this.programmedBaud) return;
    this.baudChecked = true;
    const ratio = this.programmedBaud / this.line.baud;
    if (ratio < 0.97 || ratio > 1.03) this.note(`${this.name} programmed for ${this.programmedBaud} baud, the line runs at ${this.line.baud}`);
  }

  // --- TX ---
  startTx() {
    while (!this.shifting && this.txFifo.length && this.txRunning) {
      this.checkBaud();
      const byte = this.txFifo.shift();
      this.txLevelChanged();
      if (!this.line.byteNanos) {
        this.line.txBytes++;
        this.line.sink(byte);
        continue;
      }
      this.shifting = true;
      this.shiftByte = byte;
      this.txAlarm.schedule(this.line.byteNanos);
    }
    this.updateInterrupt();
  }

  txDone() {
    this.shifting = false;
    this.line.txBytes++;
    this.line.sink(this.shiftByte);
    this.startTx();
  }

  // --- RX ---
  /** Moves host bytes towards the RX FIFO at line speed while it has room. */
  pumpRx() {
    if (this.rxScheduled || !this.rxRunning) return;
    const byteNanos = this.line.byteNanos;
    while (this.line.pendingCount && this.rxFifo.length < this.depth) {
      if (byteNanos) {
        const now = this.rp2040.clock.nanos;
        const arrival = Math.max(now, this.wireFreeNanos) + byteNanos;
        this.wireFreeNanos = arrival;
        this.rxScheduled = true;
        this.rxAlarm.schedule(arrival - now);
        return;
      }
      this.receive(this.line.takePending());
    }
  }

  rxArrived() {
    this.rxScheduled = false;
    if (this.rxRunning && this.rxFifo.length < this.depth && this.line.pendingCount) this.receive(this.line.takePending());
    this.pumpRx();
  }

  receive(byte) {
    this.rxFifo.push(byte);
    this.rxLevelChanged();
    this.timeoutAlarm.schedule(32 * (1e9 / (this.line.baud || NOMINAL_BAUD)));
    this.updateInterrupt();
  }

  rxTimeout() {
    if (this.rxFifo.length) {
      this.ris |= INT_RT;
      this.updateInterrupt();
    }
  }

  readUint32(offset) {
    switch (offset) {
      case DR: {
        const value = this.rxFifo.length ? this.rxFifo.shift() : 0;
        this.rxLevelChanged();
        this.updateInterrupt();
        this.pumpRx();
        return value;
      }
      case RSR:
        return 0; // no framing, parity, break or overrun errors on the model's line
      case FR:
        return this.flags;
      case ILPR:
        return this.ilpr;
      case IBRD:
        return this.ibrd;
      case FBRD:
        return this.fbrd;
      case LCR_H:
        return this.lcrH;
      case CR:
        return this.cr;
      case IFLS:
        return this.ifls;
      case IMSC:
        return this.imsc;
      case RIS:
        return this.ris;
      case MIS:
        return this.ris & this.imsc;
      case ICR:
        return 0;
      case DMACR:
        return this.dmacr;
    }
    if (offset in PERIPH_ID) return PERIPH_ID[offset];
    return super.readUint32(offset);
  }

  writeUint32(offset, value) {
    switch (offset) {
      case DR:
        if (this.txFifo.length < this.depth) {
          this.txFifo.push(value & 0xff);
          this.txLevelChanged();
        }
        this.startTx();
        return;
      case RSR:
        return; // write clears the (always clear) error flags
      case ILPR:
        this.ilpr = value & 0xff;
        return;
      case IBRD:
        this.ibrd = value & 0xffff;
        return;
      case FBRD:
        this.fbrd = value & 0x3f;
        return;
      case LCR_H:
        this.lcrH = value & 0xff;
        this.txLevelChanged();
        this.rxLevelChanged();
        this.updateInterrupt();
        return;
      case CR:
        this.cr = value & 0xff87;
        this.startTx();
        this.pumpRx();
        return;
      case IFLS:
        this.ifls = value & 0x3f;
        return;
      case IMSC:
        this.imsc = value & 0x7ff;
        this.updateInterrupt();
        return;
      case ICR:
        this.ris &= ~this.rawWriteValue;
        this.updateInterrupt();
        return;
      case DMACR:
        this.dmacr = value & 7;
        return;
    }
    super.writeUint32(offset, value);
  }
}

module.exports = { Pl011, SerialLine, FIFO_DEPTH, FR_BUSY, FR_RXFE, FR_TXFF, FR_RXFF, FR_TXFE, INT_RX, INT_TX, INT_RT };
