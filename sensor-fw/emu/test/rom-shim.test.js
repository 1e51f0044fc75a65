'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { RomShim, RomFault, buildRom, boot2Crc, tag, FUNCS, WATCHDOG_BOOT_MAGIC } = require('../lib/rom-shim');
const { chipIn } = require('../testing/fixtures');

/** Calls the ROM stub at `address` (as firmware would, via BLX) and returns r0. */
function callRom(chip, address, ...args) {
  const { mcu } = chip;
  const core = mcu.core;
  args.forEach((a, i) => (core.registers[i] = a >>> 0));
  core.LR = 0x20000001;
  core.PC = address & ~1;
  core.executeInstruction(); // BKPT #n -> serviced
  core.executeInstruction(); // BX LR
  assert.strictEqual(core.PC, 0x20000000, 'the stub returns to the caller');
  return core.registers[0] >>> 0;
}

/** rom_table_lookup as firmware does it: pointers from the header at 0x14 / 0x18. */
function lookup(chip, name) {
  const { mcu } = chip;
  return callRom(chip, mcu.readUint16(0x18), mcu.readUint16(0x14), tag(name));
}

test('the header and the function table follow the datasheet layout', (t) => {
  const rom = buildRom();
  assert.deepStrictEqual([...rom.subarray(0x10, 0x13)], [0x4d, 0x75, 0x01]);
  const chip = chipIn(t);
  for (const name of Object.keys(FUNCS)) {
    const fn = lookup(chip, name);
    assert.ok(fn & 1 && fn < 0x4000, `${name} -> thumb pointer into the ROM`);
  }
  // The data table has the copyright string.
  const cr = callRom(chip, chip.mcu.readUint16(0x18), chip.mcu.readUint16(0x16), tag('CR'));
  let s = '';
  for (let a = cr; chip.mcu.readUint8(a); a++) s += String.fromCharCode(chip.mcu.readUint8(a));
  assert.match(s, /not the Raspberry Pi bootrom/);
});

test('a table entry the shim does not provide stops with its name', (t) => {
  const chip = chipIn(t);
  assert.throws(() => lookup(chip, 'SF'), (e) => e instanceof RomFault && /'SF'.*soft-float/.test(e.message));
});

test('flash_range_erase / flash_range_program from firmware: NOR semantics, visible through XIP', (t) => {
  const chip = chipIn(t);
  const { mcu } = chip;
  const erase = lookup(chip, 'RE');
  const program = lookup(chip, 'RP');
  mcu.sram.fill(0x0f, 0x100, 0x200); // source buffer at 0x20000100
  callRom(chip, program, 0x1000, 0x20000100, 256);
  assert.strictEqual(mcu.readUint32(0x10001000), 0x0f0f0f0f);
  mcu.sram.fill(0xf3, 0x100, 0x200);
  callRom(chip, program, 0x1000, 0x20000100, 256);
  assert.strictEqual(mcu.readUint32(0x10001000), 0x03030303, 'program without erase only clears bits');
  callRom(chip, erase, 0x1000, 4096, 1 << 31, 0);
  assert.strictEqual(mcu.readUint32(0x10001000), 0xffffffff);
  assert.throws(() => callRom(chip, program, 0x1001, 0x20000100, 256), (e) => e instanceof RomFault && /flash_range_program/.test(e.message));
});

test('memcpy, memset and the bit functions', (t) => {
  const chip = chipIn(t);
  const { mcu } = chip;
  callRom(chip, lookup(chip, 'MS'), 0x20000400, 0xab, 16);
  assert.strictEqual(mcu.readUint32(0x2000040c), 0xabababab);
  callRom(chip, lookup(chip, 'C4'), 0x20000500, 0x20000400, 16);
  assert.strictEqual(mcu.readUint32(0x20000500), 0xabababab);
  assert.strictEqual(callRom(chip, lookup(chip, 'P3'), 0xf0f0), 8);
  assert.strictEqual(callRom(chip, lookup(chip, 'L3'), 1), 31);
  assert.strictEqual(callRom(chip, lookup(chip, 'T3'), 8), 3);
  assert.strictEqual(callRom(chip, lookup(chip, 'R3'), 1), 0x80000000);
});

test('reset: boot2 with a good CRC is copied to SRAM and entered with LR = 0; a bad CRC stops', (t) => {
  const chip = chipIn(t);
  const { mcu, flashFile } = chip;
  const boot2 = new Uint8Array(256).fill(0x46); // a made-up boot2 body
  const crc = boot2Crc(boot2.subarray(0, 252));
  new DataView(boot2.buffer).setUint32(252, crc, true);
  flashFile.xip.set(boot2, 0);
  mcu.core.executeInstruction(); // the reset vector's BKPT
  assert.strictEqual(mcu.core.PC, 0x20041f00);
  assert.strictEqual(mcu.core.LR, 0);
  assert.ok(mcu.core.SP <= 0x20041f00, 'the stack is below the boot2 copy');
  assert.strictEqual(mcu.readUint32(0x20041f00), 0x46464646);

  const bad = chipIn(t);
  assert.throws(() => bad.mcu.core.executeInstruction(), (e) => e instanceof RomFault && /USB boot/.test(e.message));
});

test("reset: the watchdog's boot-to-address scratch protocol is honoured once", (t) => {
  const pc = 0x20001001;
  const scratch = Uint32Array.of(0, 0, 0, 0, WATCHDOG_BOOT_MAGIC, (pc ^ -WATCHDOG_BOOT_MAGIC) >>> 0, 0x20040000, pc);
  const chip = chipIn(t, { kind: 'watchdog-force', scratch });
  chip.mcu.core.executeInstruction();
  assert.strictEqual(chip.mcu.core.PC, 0x20001000);
  assert.strictEqual(chip.mcu.core.SP, 0x20040000);
  assert.strictEqual(chip.watchdog.scratchData[4], 0, 'SCRATCH4 cleared, as the bootrom does');
  assert.ok(RomShim.owns(0x100) && !RomShim.owns(0x10000000));
});
