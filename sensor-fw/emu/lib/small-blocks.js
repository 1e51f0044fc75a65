'use strict';
// Register blocks rp2040js 1.4.1 leaves unimplemented (every read 0xFFFFFFFF, writes ignored),
// which Outpost's firmware reads:
//  * ROSC (0x40060000): RANDOMBIT would always read 1, so RoscRng would hand out 0xFF bytes and
//    every node the same keys. Here RANDOMBIT returns bits from the host's CSPRNG.
//  * VREG_AND_CHIP_RESET (0x40064000): CHIP_RESET would claim every reset cause at once.
//  * XIP_CTRL (0x14000000): not mapped at all; embassy-rp's flash driver spins on
//    `while STREAM_CTR > 0` before every flash operation, forever on 0xFFFFFFFF.
//  * IO_QSPI (0x40018000): GPIO_QSPI_SS_CTRL.OUTOVER frames flash commands by forcing CS.

const crypto = require('crypto');
const { BasePeripheral } = require('rp2040js');

/** A block of plain read/write registers with reset values; others fall back to rp2040js. */
class RegisterBlock extends BasePeripheral {
  constructor(rp2040, name, resetValues) {
    super(rp2040, name);
    this.values = new Map(Object.entries(resetValues).map(([k, v]) => [Number(k), v >>> 0]));
  }
  readUint32(offset) {
    if (this.values.has(offset)) return this.values.get(offset);
    return super.readUint32(offset);
  }
  writeUint32(offset, value) {
    if (this.values.has(offset)) this.values.set(offset, value >>> 0);
    else super.writeUint32(offset, value);
  }
}

const ROSC_STATUS = 0x18;
const ROSC_RANDOMBIT = 0x1c;
const ROSC_COUNT = 0x20;

class Rosc extends RegisterBlock {
  /** @param {(n: number) => Uint8Array} [random] source of random bytes */
  constructor(rp2040, random = (n) => crypto.randomBytes(n)) {
    super(rp2040, 'ROSC', { 0x00: 0xaa0, 0x04: 0, 0x08: 0, 0x0c: 0x77616b65, 0x10: 0xaa0, 0x14: 0x8 });
    this.random = random;
    this.pool = new Uint8Array(0);
    this.bit = 0;
  }
  nextBit() {
    if (this.bit >= this.pool.length * 8) {
      this.pool = this.random(256);
      this.bit = 0;
    }
    const b = (this.pool[this.bit >> 3] >> (this.bit & 7)) & 1;
    this.bit++;
    return b;
  }
  readUint32(offset) {
    switch (offset) {
      case ROSC_STATUS:
        return (1 << 31) | (1 << 12); // STABLE, ENABLED
      case ROSC_RANDOMBIT:
        return this.nextBit();
      case ROSC_COUNT:
        return 0;
    }
    return super.readUint32(offset);
  }
  writeUint32(offset, value) {
    if (offset === ROSC_COUNT || offset === ROSC_STATUS) return;
    super.writeUint32(offset, value);
  }
}

const CHIP_RESET_HAD_POR = 1 << 8;
const CHIP_RESET_HAD_RUN = 1 << 16;
const CHIP_RESET_HAD_PSM_RESTART = 1 << 20;
const CHIP_RESET_PSM_RESTART_FLAG = 1 << 24;

class VregAndChipReset extends RegisterBlock {
  /** @param {number} chipReset the CHIP_RESET value this boot reports */
  constructor(rp2040, chipReset) {
    super(rp2040, 'VREG_AND_CHIP_RESET', { 0x00: 0xb1, 0x04: 0x91 });
    this.chipReset = chipReset >>> 0;
  }
  readUint32(offset) {
    if (offset === 0x08) return this.chipReset;
    return super.readUint32(offset);
  }
  writeUint32(offset, value) {
    if (offset === 0x08) {
      // Only PSM_RESTART_FLAG is writable; the HAD_* bits are read-only.
      this.chipReset = (this.chipReset & ~CHIP_RESET_PSM_RESTART_FLAG) | (value & CHIP_RESET_PSM_RESTART_FLAG);
      return;
    }
    super.writeUint32(offset, value);
  }
}

/** XIP cache control: no cache, no streaming in the model; counters and FIFO read empty. */
class XipCtrl extends RegisterBlock {
  constructor(rp2040) {
    super(rp2040, 'XIP_CTRL', { 0x00: 0x3, 0x0c: 0, 0x10: 0, 0x14: 0 });
  }
  readUint32(offset) {
    switch (offset) {
      case 0x04: // FLUSH
        return 0;
      case 0x08: // STAT: FIFO_EMPTY | FLUSH_READY
        return 0x3;
      case 0x18: // STREAM_CTR: no stream transfer running
      case 0x1c: // STREAM_FIFO
        return 0;
    }
    return super.readUint32(offset);
  }
  writeUint32(offset, value) {
    if (offset === 0x04 || offset === 0x18) return; // flush (nothing cached); stream start (not modelled)
    super.writeUint32(offset, value);
  }
}

/** IO_QSPI: six pins, STATUS/CTRL pairs; SS (pin 1) CTRL at 0x0c carries OUTOVER to the SSI. */
class IoQspi extends BasePeripheral {
  constructor(rp2040, ssi) {
    super(rp2040, 'IO_QSPI');
    this.ssi = ssi;
    this.ctrl = new Uint32Array(6);
    this.irq = new Map();
  }
  readUint32(offset) {
    if (offset < 0x30) return offset & 4 ? this.ctrl[offset >> 3] : 0;
    if (offset < 0x60) return this.irq.get(offset) ?? 0;
    return super.readUint32(offset);
  }
  writeUint32(offset, value) {
    if (offset < 0x30) {
      if (!(offset & 4)) return; // STATUS is read-only
      this.ctrl[offset >> 3] = value;
      if (offset === 0x0c) this.ssi.setCsOverride((value >> 8) & 3);
      return;
    }
    if (offset < 0x60) {
      this.irq.set(offset, value >>> 0);
      return;
    }
    super.writeUint32(offset, value);
  }
}

module.exports = {
  RegisterBlock,
  Rosc,
  VregAndChipReset,
  XipCtrl,
  IoQspi,
  CHIP_RESET_HAD_POR,
  CHIP_RESET_HAD_RUN,
  CHIP_RESET_HAD_PSM_RESTART,
};
