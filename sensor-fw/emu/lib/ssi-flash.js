'use strict';
// The flash chip's SPI command interface and the RP2040's SSI (DW_apb_ssi) in front of it, for
// the commands firmware sends itself rather than through the ROM: boot2's status-register dance
// (0x05/0x35/0x06/0x01/0x31), embassy-rp's Flash::blocking_unique_id (0x4B: 4 dummy bytes, then
// the 64-bit id) and blocking_jedec_id (0x9F), plain reads (0x03/0x0B), and page program / erase
// commands (0x02, 0x20, 0x52, 0xD8) for firmware that drives the flash without the ROM.
//
// rp2040js 1.4.1's RPSSI answers every DR read with 0 and always reports "RX FIFO not empty",
// so a unique-id read returns zeros. This model shifts real bytes:
//  * TX_AND_RX mode (TMOD 0): every frame written to DR is clocked out and the byte the flash
//    drives at the same time is queued in the RX FIFO;
//  * EEPROM read mode (TMOD 3, what embassy-rp uses): frames written to DR are the command, then
//    CTRLR1.NDF + 1 frames are clocked in, produced when the firmware reads DR;
//  * TX only (TMOD 1) clocks out and discards; RX only (TMOD 2) clocks in NDF + 1 frames.
// Frames are DFS_32 + 1 bits (8, 16, 24 or 32), most significant byte first.
//
// Chip select: the SSI drives CS while a transfer is under way. With instant transfers the model
// ends a transaction when the firmware waits for the SSI to finish (reads SR in TX_AND_RX/TX
// mode), when the last EEPROM/RX frame has been read, or when SSIENR goes 0. Firmware that forces
// CS through IO_QSPI GPIO_QSPI_SS_CTRL.OUTOVER (pico-sdk's flash_do_cmd) gets exactly the
// transaction it framed.

const { BasePeripheral } = require('rp2040js');

const CTRLR0 = 0x00;
const CTRLR1 = 0x04;
const SSIENR = 0x08;
const SR = 0x28;
const TXFLR = 0x20;
const RXFLR = 0x24;
const DR0 = 0x60;
const IDR = 0x58;
const VERSION_ID = 0x5c;
const SR_TFNF = 1 << 1;
const SR_TFE = 1 << 2;
const SR_RFNE = 1 << 3;

const TMOD_TX_AND_RX = 0;
const TMOD_TX_ONLY = 1;
const TMOD_RX_ONLY = 2;
const TMOD_EEPROM = 3;

/** W25Q16JV (2 MiB), the part on Outpost's node board: manufacturer 0xEF, type 0x40, capacity 0x15. */
const JEDEC_ID = [0xef, 0x40, 0x15];

/** The flash chip's command interface. Status registers live as long as the process (the part keeps them). */
class SerialFlash {
  /**
   * @param {import('./flash-file').FlashFile} file
   * @param {Uint8Array} uid 8 bytes
   * @param {(message: string) => void} [note]
   */
  constructor(file, uid, note = () => {}) {
    this.file = file;
    this.uid = uid;
    this.note = note;
    this.sr1 = 0; // BUSY never set: operations complete at once
    this.sr2 = 0; // QE clear until boot2 sets it
    this.sr3 = 0;
    this.selected = false;
    this.noted = new Set();
  }

  get writeEnabled() {
    return !!(this.sr1 & 0x02);
  }

  select() {
    this.selected = true;
    this.bytes = [];
  }

  /** One byte each way while selected. */
  transfer(out) {
    if (!this.selected) this.select();
    const position = this.bytes.length;
    this.bytes.push(out);
    if (position === 0) return 0xff; // MISO is not driven while the opcode goes in
    const [op] = this.bytes;
    const addr = () => (this.bytes[1] << 16) | (this.bytes[2] << 8) | this.bytes[3];
    switch (op) {
      case 0x9f:
        return position <= 3 ? JEDEC_ID[position - 1] : 0xff;
      case 0x4b:
        return position >= 5 && position <= 12 ? this.uid[position - 5] : 0xff;
      case 0x05:
        return this.sr1;
      case 0x35:
        return this.sr2;
      case 0x15:
        return this.sr3;
      case 0x03:
        return position >= 4 ? this.read(addr() + position - 4) : 0xff;
      case 0x0b:
        return position >= 5 ? this.read(addr() + position - 5) : 0xff;
      default:
        return 0xff;
    }
  }

  read(offset) {
    return this.file.xip[offset % this.file.size];
  }

  /** Chip select released: commands that act on release do so now. */
  deselect() {
    if (!this.selected) return;
    this.selected = false;
    const [op, ...args] = this.bytes;
    if (op === undefined) return;
    const addr = ((args[0] << 16) | (args[1] << 8) | args[2]) >>> 0;
    switch (op) {
      case 0x06:
        this.sr1 |= 0x02;
        return;
      case 0x04:
        this.sr1 &= ~0x02;
        return;
      case 0x01: // write status register 1 (and 2)
        if (!this.writeEnabled) return;
        if (args.length >= 1) this.sr1 = args[0] & 0xfc;
        if (args.length >= 2) this.sr2 = args[1];
        this.sr1 &= ~0x02;
        return;
      case 0x31:
        if (this.writeEnabled && args.length >= 1) this.sr2 = args[0];
        this.sr1 &= ~0x02;
        return;
      case 0x02: {
        if (!this.writeEnabled || args.length < 4) return;
        // Page program wraps within its 256-byte page, like the part.
        const page = addr & ~0xff;
        const data = args.slice(3, 3 + 256);
        const bytes = new Uint8Array(256).fill(0xff);
        data.forEach((b, i) => (bytes[(addr + i) & 0xff] &= b));
        this.sr1 &= ~0x02;
        this.file.programPage(page, bytes);
        return;
      }
      case 0x20:
      case 0x52:
      case 0xd8: {
        if (!this.writeEnabled || args.length < 3) return;
        const size = op === 0x20 ? 4096 : op === 0x52 ? 32768 : 65536;
        this.sr1 &= ~0x02;
        this.file.erase(addr & ~(size - 1) % this.file.size, size);
        return;
      }
      case 0xc7:
      case 0x60:
        if (!this.writeEnabled) return;
        this.sr1 &= ~0x02;
        this.file.erase(0, this.file.size);
        return;
      default:
    }
  }
}

class SsiFlashPort extends BasePeripheral {
  /** @param {SerialFlash} flash */
  constructor(rp2040, name, flash) {
    super(rp2040, name);
    this.flash = flash;
    this.regs = new Map([
      [0x14, 0], // BAUDR
      [0x10, 0], // SER
      [0xf0, 0], // RX_SAMPLE_DLY
      [0xf4, 0x03000000], // SPI_CTRLR0
      [0xf8, 0], // TXD_DRIVE_EDGE
    ]);
    this.ctrlr0 = 0;
    this.ctrlr1 = 0;
    this.enabled = 0;
    this.rxFifo = [];
    this.framesToRead = 0;
    /** null = the SSI drives CS; 'low' / 'high' = forced through IO_QSPI. */
    this.csOverride = null;
  }

  get tmod() {
    return (this.ctrlr0 >> 8) & 3;
  }
  /** Dual/quad (SPI_FRF != 0) is only the XIP read path, which the model serves directly. */
  get standardSpi() {
    return ((this.ctrlr0 >> 21) & 3) === 0;
  }
  get frameBytes() {
    return Math.max(1, (((this.ctrlr0 >> 16) & 0x1f) + 1) >> 3);
  }

  /** IO_QSPI SS OUTOVER: 0 normal, 1 inverted, 2 forced low, 3 forced high. */
  setCsOverride(outover) {
    const before = this.csOverride;
    this.csOverride = outover === 2 ? 'low' : outover === 3 ? 'high' : null;
    if (before === 'low' && this.csOverride !== 'low') this.endTransaction(true);
  }

  endTransaction(force = false) {
    if (this.csOverride === 'low' && !force) return;
    this.flash.deselect();
    this.framesToRead = 0;
  }

  shiftFrame(value) {
    let result = 0;
    for (let i = this.frameBytes - 1; i >= 0; i--) result = (result << 8) | this.flash.transfer((value >>> (8 * i)) & 0xff);
    return result >>> 0;
  }

  readUint32(offset) {
    if (offset > DR0 && offset <= 0xec) offset = DR0; // DR1..DR35 alias the same FIFO
    switch (offset) {
      case CTRLR0:
        return this.ctrlr0;
      case CTRLR1:
        return this.ctrlr1;
      case SSIENR:
        return this.enabled;
      case TXFLR:
        return 0;
      case RXFLR:
        return this.tmod === TMOD_EEPROM || this.tmod === TMOD_RX_ONLY ? this.framesToRead : this.rxFifo.length;
      case SR: {
        const tmod = this.tmod;
        let rxReady;
        if (tmod === TMOD_EEPROM || tmod === TMOD_RX_ONLY) rxReady = this.framesToRead > 0;
        else {
          rxReady = this.rxFifo.length > 0;
          this.endTransaction(); // the firmware waits for the transfer to finish: CS goes up
        }
        return SR_TFNF | SR_TFE | (rxReady ? SR_RFNE : 0);
      }
      case DR0: {
        const tmod = this.tmod;
        if (tmod === TMOD_EEPROM || tmod === TMOD_RX_ONLY) {
          if (this.framesToRead <= 0) return 0;
          const value = this.shiftFrame(0);
          if (--this.framesToRead === 0) this.endTransaction();
          return value;
        }
        return this.rxFifo.length ? this.rxFifo.shift() : 0;
      }
      case IDR:
        return 0x51535049;
      case VERSION_ID:
        return 0x3430312a;
    }
    if (this.regs.has(offset)) return this.regs.get(offset);
    if (offset >= 0x2c && offset <= 0x54) return 0; // interrupt and DMA registers: nothing pending
    return super.readUint32(offset);
  }

  writeUint32(offset, value) {
    if (offset > DR0 && offset <= 0xec) offset = DR0;
    switch (offset) {
      case CTRLR0:
        this.ctrlr0 = value >>> 0;
        return;
      case CTRLR1:
        this.ctrlr1 = value & 0xffff;
        return;
      case SSIENR:
        this.enabled = value & 1;
        this.rxFifo = [];
        this.endTransaction();
        return;
      case DR0: {
        const tmod = this.tmod;
        if (!this.standardSpi) return;
        if (tmod === TMOD_RX_ONLY) {
          this.framesToRead = this.ctrlr1 + 1; // the write only starts the transfer
          return;
        }
        const frame = this.shiftFrame(value);
        if (tmod === TMOD_TX_AND_RX) this.rxFifo.push(frame);
        if (tmod === TMOD_EEPROM) this.framesToRead = this.ctrlr1 + 1;
        return;
      }
    }
    if (this.regs.has(offset)) {
      this.regs.set(offset, value >>> 0);
      return;
    }
    if (offset >= 0x2c && offset <= 0x54) return;
    super.writeUint32(offset, value);
  }
}

module.exports = { SerialFlash, SsiFlashPort, JEDEC_ID };
