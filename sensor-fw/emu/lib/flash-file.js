'use strict';
// The board's QSPI NOR flash, backed by a file that always holds exactly what the chip's flash
// holds: every erase and program is written through to the file before the call returns, so a
// process killed at any instant (a power cut) leaves the file as the flash would be.
//
// NOR semantics: an erase sets a 4 KiB sector to 0xFF; a program can only clear bits
// (new = old & data), so programming without erasing shows up as corrupt data, as on the part.
//
// Counting for power cuts: one operation is one 4 KiB sector erase or one program of (part of)
// one 256-byte page, which is what the flash chip itself executes; a ROM call that erases 64 KiB
// is 16 operations. A cut tears the operation it lands in: an erase leaves the sector holding
// random bytes, a program leaves a random prefix of its bytes programmed.

const fs = require('fs');
const crypto = require('crypto');

const SECTOR = 4096;
const PAGE = 256;
/** rp2040js maps 16 MiB of flash at 0x10000000; the part is smaller and the rest reads 0xFF. */
const XIP_WINDOW = 16 * 1024 * 1024;
const XIP_BASE = 0x10000000;

class PowerCut extends Error {
  constructor(op, kind, offset) {
    super(`power cut at flash op ${op} (${kind} 0x${(XIP_BASE + offset).toString(16)})`);
    this.op = op;
    this.kind = kind;
    this.offset = offset;
  }
}

/** The chip was reset (watchdog) while the flash was busy with an operation, which is torn. */
class ResetDuringFlash extends Error {
  constructor(op, kind, offset) {
    super(`reset during flash op ${op} (${kind} 0x${(XIP_BASE + offset).toString(16)}): the operation is torn`);
    this.op = op;
    this.kind = kind;
    this.offset = offset;
  }
}

class FlashError extends Error {}

/**
 * How long the part is busy per operation (Winbond W25Q16JV datasheet, AC characteristics:
 * tSE sector erase 45 ms typical / 400 ms maximum, tPP page program 0.4 ms / 3 ms).
 */
const FLASH_TIMINGS = {
  typical: { erase: 45e6, program: 0.4e6 },
  max: { erase: 400e6, program: 3e6 },
};

/** Parses "2M", "512K", "0x200000" or "2097152" into bytes. */
function parseSize(text) {
  const m = /^(0x[0-9a-f]+|\d+)([kKmM]?)$/.exec(String(text).trim());
  if (!m) throw new FlashError(`bad size '${text}' (use e.g. 2M, 512K or a byte count)`);
  const unit = { '': 1, k: 1024, m: 1024 * 1024 }[m[2].toLowerCase()];
  return Number(m[1]) * unit;
}

function checkSize(size, what) {
  if (!Number.isInteger(size) || size < SECTOR || size > XIP_WINDOW || size % SECTOR) {
    throw new FlashError(`${what}: flash size ${size} must be a multiple of 4 KiB between 4 KiB and 16 MiB`);
  }
}

class FlashFile {
  /**
   * Opens an existing flash file for read and write-through. Its size is the flash size.
   * @param {string} path
   * @param {{cutAfterOps?: number, random?: (n: number) => Uint8Array}} [options]
   */
  constructor(path, options = {}) {
    this.path = path;
    const size = fs.statSync(path).size;
    checkSize(size, path);
    this.size = size;
    this.fd = fs.openSync(path, 'r+');
    this.xip = new Uint8Array(XIP_WINDOW).fill(0xff);
    for (let at = 0; at < size; ) {
      const n = fs.readSync(this.fd, this.xip, at, size - at, at);
      if (n === 0) throw new FlashError(`${path}: shorter than its ${size} bytes while reading`);
      at += n;
    }
    /** Operations done so far (sector erases + page programs). */
    this.ops = 0;
    this.erases = 0;
    this.programs = 0;
    /** The cut comes in operation cutAfterOps + 1. */
    this.cutAfterOps = options.cutAfterOps ?? Infinity;
    this.random = options.random ?? ((n) => crypto.randomBytes(n));
    /** Called after each operation: (op number, 'erase' | 'program', offset, length). */
    this.onOp = null;
    /** Busy time per operation (FLASH_TIMINGS entry), or null for instantaneous operations. */
    this.timing = options.timing ?? null;
    /**
     * Lets `nanos` of emulated time pass while the part is busy; returns true when the chip was
     * reset meanwhile (the watchdog kept counting), which tears the operation.
     */
    this.busy = null;
  }

  close() {
    if (this.fd !== null) fs.closeSync(this.fd);
    this.fd = null;
  }

  persist(offset, length) {
    fs.writeSync(this.fd, this.xip, offset, length, offset);
  }

  checkRange(what, offset, length, align) {
    if (offset % align || length % align) {
      throw new FlashError(`${what} 0x${offset.toString(16)} +0x${length.toString(16)}: not aligned to ${align} bytes`);
    }
    if (offset < 0 || offset + length > this.size) {
      throw new FlashError(`${what} 0x${offset.toString(16)} +0x${length.toString(16)}: beyond the ${this.size}-byte flash`);
    }
  }

  /** Counts one operation; tears it and throws PowerCut when it is the one the cut lands in. */
  begin(kind, offset, tear) {
    const op = this.ops + 1;
    if (op > this.cutAfterOps) {
      tear();
      throw new PowerCut(op, kind, offset);
    }
    if (this.timing && this.busy && this.busy(this.timing[kind])) {
      tear();
      this.ops = op;
      throw new ResetDuringFlash(op, kind, offset);
    }
    this.ops = op;
    return op;
  }

  /** Erases whole 4 KiB sectors: `offset` and `length` multiples of 4096. */
  erase(offset, length) {
    this.checkRange('erase', offset, length, SECTOR);
    for (let at = offset; at < offset + length; at += SECTOR) this.eraseSector(at);
  }

  eraseSector(at) {
    const op = this.begin('erase', at, () => {
      this.xip.set(this.random(SECTOR), at);
      this.persist(at, SECTOR);
    });
    this.xip.fill(0xff, at, at + SECTOR);
    this.persist(at, SECTOR);
    this.erases++;
    if (this.onOp) this.onOp(op, 'erase', at, SECTOR);
  }

  /** Programs `data` at `offset` (both multiples of 256, as the ROM requires), page by page. */
  program(offset, data) {
    this.checkRange('program', offset, data.length, PAGE);
    for (let i = 0; i < data.length; i += PAGE) this.programPage(offset + i, data.subarray(i, i + PAGE));
  }

  /** Programs bytes within one 256-byte page (NOR: only clears bits). */
  programPage(at, bytes) {
    if (Math.floor(at / PAGE) !== Math.floor((at + bytes.length - 1) / PAGE) || at + bytes.length > this.size) {
      throw new FlashError(`program 0x${at.toString(16)} +${bytes.length}: crosses a page or the end of flash`);
    }
    const apply = (n) => {
      for (let i = 0; i < n; i++) this.xip[at + i] &= bytes[i];
      this.persist(at, bytes.length);
    };
    const op = this.begin('program', at, () => apply(this.random(1)[0] % bytes.length));
    apply(bytes.length);
    this.programs++;
    if (this.onOp) this.onOp(op, 'program', at, bytes.length);
  }
}

module.exports = { FlashFile, FlashError, PowerCut, ResetDuringFlash, FLASH_TIMINGS, parseSize, checkSize, SECTOR, PAGE, XIP_BASE, XIP_WINDOW };
