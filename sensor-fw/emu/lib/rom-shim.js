'use strict';
// A stand-in for the RP2040 bootrom, written for Outpost from the datasheet (section 2.8): it
// contains no Raspberry Pi code. The 16 KiB image has the documented header (initial SP, reset
// vector, magic 'M' 'u' 0x01, version, 16-bit pointers to the function table, the data table and
// rom_table_lookup) and, for each function, a 4-byte stub `BKPT #n; BX LR`. rp2040js reports the
// BKPT (PC already past it) and `service` does the work on the emulated chip from r0..r3 and
// returns; the BX LR then returns to the firmware.
//
// The reset stub plays the bootrom's flash boot: the watchdog's "boot to address" scratch
// protocol (SCRATCH4..7), else boot2 (the first 256 bytes of flash) copied to SRAM 0x20041f00,
// its CRC checked, and entered with LR = 0 as the real bootrom does.

const { FlashError } = require('./flash-file');

const ROM_SIZE = 16 * 1024;
const BOOT2_SRAM = 0x20041f00;
const STACK_TOP = 0x20042000;
const SRAM_BASE = 0x20000000;
const WATCHDOG_BOOT_MAGIC = 0xb007c0d3;
const SSI_BASE = 0x18000000;

const tag = (s) => s.charCodeAt(0) | (s.charCodeAt(1) << 8);
const untag = (code) => String.fromCharCode(code & 0xff, (code >> 8) & 0xff);

/** Stub numbers (BKPT immediates inside the ROM). */
const RESET = 0x01;
const LOOKUP = 0x02;
const FUNCS = {
  P3: 0x10, // popcount32
  R3: 0x11, // reverse32
  L3: 0x12, // clz32
  T3: 0x13, // ctz32
  MS: 0x20, // memset
  S4: 0x21, // memset4
  MC: 0x22, // memcpy
  C4: 0x23, // memcpy44
  IF: 0x30, // connect_internal_flash
  EX: 0x31, // flash_exit_xip
  RE: 0x32, // flash_range_erase
  RP: 0x33, // flash_range_program
  FC: 0x34, // flash_flush_cache
  CX: 0x35, // flash_enter_cmd_xip
  UB: 0x40, // reset_to_usb_boot
};

class RomFault extends Error {}

/** CRC-32 as boot2's checksum: polynomial 0x04c11db7, init 0xffffffff, not reflected, no xorout. */
function boot2Crc(bytes) {
  let crc = 0xffffffff;
  for (const b of bytes) {
    crc ^= b << 24;
    for (let i = 0; i < 8; i++) crc = crc & 0x80000000 ? (crc << 1) ^ 0x04c11db7 : crc << 1;
  }
  return crc >>> 0;
}

function buildRom() {
  const rom = new Uint8Array(ROM_SIZE);
  const dv = new DataView(rom.buffer);
  let p = 0x100;
  const stub = (n) => {
    const at = p;
    dv.setUint16(p, 0xbe00 | n, true); // BKPT #n
    dv.setUint16(p + 2, 0x4770, true); // BX LR
    p += 4;
    return at | 1;
  };
  const resetStub = stub(RESET);
  const lookupStub = stub(LOOKUP);
  const funcAddr = {};
  for (const [name, n] of Object.entries(FUNCS)) funcAddr[name] = stub(n);
  const funcTable = p;
  for (const [name, addr] of Object.entries(funcAddr)) {
    dv.setUint16(p, tag(name), true);
    dv.setUint16(p + 2, addr, true);
    p += 4;
  }
  dv.setUint32(p, 0, true);
  p += 4;
  const copyright = p;
  for (const c of 'Outpost emulator ROM shim (not the Raspberry Pi bootrom)\0') rom[p++] = c.charCodeAt(0);
  p = (p + 3) & ~3;
  const gitRevision = p;
  dv.setUint32(p, 0, true);
  p += 4;
  const dataTable = p;
  dv.setUint16(p, tag('CR'), true);
  dv.setUint16(p + 2, copyright, true);
  dv.setUint16(p + 4, tag('GR'), true);
  dv.setUint16(p + 6, gitRevision, true);
  dv.setUint32(p + 8, 0, true);
  dv.setUint32(0x00, STACK_TOP, true); // initial SP
  dv.setUint32(0x04, resetStub, true); // reset
  dv.setUint32(0x08, resetStub, true); // NMI
  dv.setUint32(0x0c, resetStub, true); // HardFault
  rom.set([0x4d, 0x75, 0x01, 0x03], 0x10); // 'M' 'u' 0x01, version 3 (RP2040-B2)
  dv.setUint16(0x14, funcTable, true);
  dv.setUint16(0x16, dataTable, true);
  dv.setUint16(0x18, lookupStub, true);
  return rom;
}

const ROM_IMAGE = buildRom();

class RomShim {
  /** @param {import('./flash-file').FlashFile} flash */
  constructor(flash) {
    this.flash = flash;
  }

  /** Puts the ROM into a fresh chip (without RP2040.loadBootrom, which would wipe the flash). */
  install(mcu) {
    mcu.bootrom.set(new Uint32Array(ROM_IMAGE.buffer));
  }

  /** True when a BKPT at `pc` is one of the shim's stubs. */
  static owns(pc) {
    return pc < ROM_SIZE;
  }

  /** Services the stub whose BKPT immediate is `n`; throws RomFault on a call the ROM would not take. */
  service(mcu, n) {
    const core = mcu.core;
    const r = core.registers;
    switch (n) {
      case RESET:
        return this.boot(mcu);
      case LOOKUP: {
        const code = r[1] & 0xffff;
        let t = r[0] >>> 0;
        for (;;) {
          const k = mcu.readUint16(t);
          if (k === 0) break;
          if (k === code) {
            r[0] = mcu.readUint16(t + 2);
            return;
          }
          t += 4;
        }
        const hint = code === tag('SF') || code === tag('SD') ? ' (the ROM soft-float tables are not provided: use compiler_builtins, e.g. rp2040-hal feature disable-intrinsics)' : '';
        throw new RomFault(`rom_table_lookup('${untag(code)}'): not provided by the ROM shim${hint}`);
      }
      case FUNCS.P3: {
        let x = r[0] >>> 0;
        let k = 0;
        while (x) {
          k += x & 1;
          x >>>= 1;
        }
        r[0] = k;
        return;
      }
      case FUNCS.R3: {
        let x = r[0] >>> 0;
        let y = 0;
        for (let i = 0; i < 32; i++) {
          y = (y << 1) | (x & 1);
          x >>>= 1;
        }
        r[0] = y >>> 0;
        return;
      }
      case FUNCS.L3:
        r[0] = Math.clz32(r[0]);
        return;
      case FUNCS.T3: {
        const x = r[0] >>> 0;
        r[0] = x ? 31 - Math.clz32(x & -x) : 32;
        return;
      }
      case FUNCS.MS:
      case FUNCS.S4: {
        const dst = r[0] >>> 0;
        const value = r[1] & 0xff;
        const len = r[2] >>> 0;
        if (inSram(mcu, dst, len)) mcu.sram.fill(value, dst - SRAM_BASE, dst - SRAM_BASE + len);
        else for (let i = 0; i < len; i++) mcu.writeUint8(dst + i, value);
        return; // returns dst: r0 unchanged
      }
      case FUNCS.MC:
      case FUNCS.C4: {
        const dst = r[0] >>> 0;
        const src = r[1] >>> 0;
        const len = r[2] >>> 0;
        if (inSram(mcu, dst, len)) {
          const bytes = new Uint8Array(len);
          for (let i = 0; i < len; i++) bytes[i] = mcu.readUint8(src + i);
          mcu.sram.set(bytes, dst - SRAM_BASE);
        } else for (let i = 0; i < len; i++) mcu.writeUint8(dst + i, mcu.readUint8(src + i));
        return;
      }
      case FUNCS.IF: // connect_internal_flash: the pads and SSI need no setup in the model
        return;
      case FUNCS.EX:
        // flash_exit_xip leaves the SSI in serial mode (8-bit frames, TX and RX, standard SPI,
        // enabled); firmware that then sends its own commands (embassy-rp's unique-id read ORs
        // only TMOD into CTRLR0) relies on that.
        mcu.writeUint32(SSI_BASE + 0x08, 0);
        mcu.writeUint32(SSI_BASE + 0x00, 7 << 16);
        mcu.writeUint32(SSI_BASE + 0x08, 1);
        return;
      case FUNCS.FC: // flash_flush_cache: there is no cache in the model
      case FUNCS.CX: // flash_enter_cmd_xip
        return;
      case FUNCS.RE: {
        // flash_range_erase(addr, count, block_size, block_cmd): the sectors one by one
        const offset = r[0] >>> 0;
        const count = r[1] >>> 0;
        this.guard('flash_range_erase', () => this.flash.erase(offset, count));
        return;
      }
      case FUNCS.RP: {
        // flash_range_program(addr, data, count)
        const offset = r[0] >>> 0;
        const src = r[1] >>> 0;
        const count = r[2] >>> 0;
        const data = new Uint8Array(count);
        for (let i = 0; i < count; i++) data[i] = mcu.readUint8(src + i);
        this.guard('flash_range_program', () => this.flash.program(offset, data));
        return;
      }
      case FUNCS.UB:
        throw new RomFault('reset_to_usb_boot: the firmware asked for USB boot (BOOTSEL), which is not modelled');
      default:
        throw new RomFault(`unknown ROM stub #${n}`);
    }
  }

  guard(what, fn) {
    try {
      fn();
    } catch (e) {
      if (e instanceof FlashError) throw new RomFault(`${what}: ${e.message}`);
      throw e;
    }
  }

  /** The bootrom's flash boot path. */
  boot(mcu) {
    const core = mcu.core;
    const scratch = mcu.peripherals[0x40058].scratchData;
    if (scratch[4] === WATCHDOG_BOOT_MAGIC && ((scratch[5] ^ -WATCHDOG_BOOT_MAGIC) >>> 0) === scratch[7] && scratch[7]) {
      scratch[4] = 0;
      core.SP = scratch[6];
      core.LR = 0;
      core.PC = scratch[7] & ~1;
      return;
    }
    const boot2 = mcu.flash.subarray(0, 256);
    const stored = boot2[252] | (boot2[253] << 8) | (boot2[254] << 16) | (boot2[255] << 24);
    const computed = boot2Crc(boot2.subarray(0, 252));
    if (computed !== stored >>> 0) {
      throw new RomFault(
        `boot2 (flash 0x10000000..0x100) has CRC 0x${computed.toString(16)}, stored 0x${(stored >>> 0).toString(16)}: ` +
          'the RP2040 bootrom would not run it and would enter USB boot (BOOTSEL). Is a bootloader or boot2 in the flash image?',
      );
    }
    mcu.sram.set(boot2, BOOT2_SRAM - SRAM_BASE);
    core.SP = BOOT2_SRAM; // the stack grows down from boot2's copy, which it must not overwrite
    core.LR = 0; // boot2 vectors into flash (VTOR 0x10000100) only when LR is 0
    core.PC = BOOT2_SRAM;
  }
}

function inSram(mcu, addr, len) {
  return addr >= SRAM_BASE && addr + len <= SRAM_BASE + mcu.sram.length;
}

module.exports = { RomShim, RomFault, buildRom, boot2Crc, tag, untag, FUNCS, ROM_SIZE, WATCHDOG_BOOT_MAGIC };
