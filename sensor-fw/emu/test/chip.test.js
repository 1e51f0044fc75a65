'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { resetStateAfter } = require('../lib/emulator');
const { temperatureAdcCode } = require('../lib/chip');
const { chipIn } = require('../testing/fixtures');

const CHIP_RESET = 0x40064008;
const WATCHDOG = 0x40058000;
const REASON = WATCHDOG + 0x08;
const SCRATCH0 = WATCHDOG + 0x0c;
const ROSC_RANDOMBIT = 0x4006001c;
const XIP_STREAM_CTR = 0x14000018;
const SSI = 0x18000000;

test('power-on: CHIP_RESET.HAD_POR set, WATCHDOG.REASON 0, scratch 0', (t) => {
  const { mcu } = chipIn(t, { scratch: Uint32Array.of(9, 9, 9, 9, 9, 9, 9, 9) });
  assert.strictEqual(mcu.readUint32(CHIP_RESET), 1 << 8);
  assert.strictEqual(mcu.readUint32(REASON), 0);
  assert.strictEqual(mcu.readUint32(SCRATCH0), 0);
});

test('watchdog and SYSRESETREQ resets keep the scratch registers and clear HAD_POR', (t) => {
  const scratch = Uint32Array.of(0xc0ffee, 1, 2, 3, 4, 5, 6, 7);
  for (const [kind, reason] of [['watchdog-timer', 1], ['watchdog-force', 2], ['sysresetreq', 0]]) {
    const { mcu } = chipIn(t, { kind, scratch });
    assert.strictEqual(mcu.readUint32(CHIP_RESET), 0, kind);
    assert.strictEqual(mcu.readUint32(REASON), reason, kind);
    assert.strictEqual(mcu.readUint32(SCRATCH0 + 28), 7, kind);
  }
  assert.deepStrictEqual(resetStateAfter('power-on').scratch, new Uint32Array(8));
});

test('CTRL.TRIGGER and AIRCR.SYSRESETREQ request a reset; a wrong VECTKEY does not', (t) => {
  const chip = chipIn(t);
  chip.mcu.writeUint32(0xe000ed0c, 0x05fa0004);
  chip.mcu.writeUint32(0xe000ed0c, 0x12340004);
  chip.mcu.writeUint32(WATCHDOG, 1 << 31);
  assert.deepStrictEqual(chip.resets, ['sysresetreq', 'watchdog-force']);
  assert.strictEqual(chip.mcu.readUint32(0xe000ed0c) >>> 16, 0xfa05, 'VECTKEYSTAT');
});

test('the watchdog counts down twice per 1 us tick (RP2040-E1), as embassy-rp compensates', (t) => {
  const chip = chipIn(t);
  const { mcu } = chip;
  // embassy-rp Watchdog::start(8 s): LOAD = 8_000_000 us * 2, then ENABLE.
  mcu.writeUint32(WATCHDOG + 0x04, 16_000_000);
  mcu.writeUint32(WATCHDOG, 1 << 30);
  mcu.clock.tick(7.999e9);
  assert.deepStrictEqual(chip.resets, []);
  mcu.clock.tick(0.002e9);
  assert.deepStrictEqual(chip.resets, ['watchdog-timer']);
});

test('enabling a watchdog that was never loaded, then TRIGGER (embassy-rp trigger_reset) is a FORCE reset', (t) => {
  const chip = chipIn(t);
  chip.mcu.writeUint32(WATCHDOG, 1 << 30); // enable with the counter at 0
  chip.mcu.writeUint32(WATCHDOG, 1 << 31); // trigger on the next instruction
  chip.mcu.clock.tick(10e3);
  assert.deepStrictEqual(chip.resets, ['watchdog-force']);
});

test('ROSC RANDOMBIT gives random bits (two chips, different keys)', (t) => {
  const draw = (mcu) => {
    let bytes = '';
    for (let i = 0; i < 16; i++) {
      let b = 0;
      for (let j = 0; j < 8; j++) b = (b << 1) | (mcu.readUint32(ROSC_RANDOMBIT) & 1);
      bytes += b.toString(16).padStart(2, '0');
    }
    return bytes;
  };
  const a = draw(chipIn(t).mcu);
  const b = draw(chipIn(t).mcu);
  assert.notStrictEqual(a, b);
  assert.notStrictEqual(a, 'ff'.repeat(16));
  assert.strictEqual(chipIn(t).mcu.readUint32(0x40060018) >>> 31, 1, 'STATUS.STABLE');
});

test('XIP_CTRL STREAM_CTR reads 0 (embassy-rp waits for it before every flash operation)', (t) => {
  assert.strictEqual(chipIn(t).mcu.readUint32(XIP_STREAM_CTR), 0);
});

test('ADC channel 4 reads the temperature sensor at --chip-temp', (t) => {
  assert.strictEqual(temperatureAdcCode(27), 876);
  const { mcu } = chipIn(t, { chipCelsius: 60 });
  mcu.writeUint32(0x4004c000, (4 << 12) | (1 << 1) | 1 | (1 << 2)); // AINSEL 4, TS_EN, EN, START_ONCE
  mcu.clock.tick(10e3);
  const code = mcu.readUint32(0x4004c004);
  assert.strictEqual(code, temperatureAdcCode(60));
  const celsius = 27 - ((code * 3.3) / 4096 - 0.706) / 0.001721;
  assert.ok(Math.abs(celsius - 60) < 0.5, `${celsius}`);
});

/** embassy-rp 0.10 read_flash_inner: EEPROM read mode after the ROM's flash_exit_xip. */
function embassyRead(mcu, cmd, dummy, length) {
  mcu.writeUint32(SSI + 0x08, 0);
  mcu.writeUint32(SSI + 0x00, mcu.readUint32(SSI) | 0x300);
  mcu.writeUint32(SSI + 0x04, dummy + length - 1);
  mcu.writeUint32(SSI + 0x08, 1);
  for (const b of cmd) mcu.writeUint8(SSI + 0x60, b);
  const out = [];
  for (let i = 0; i < dummy + length; i++) {
    assert.ok(mcu.readUint32(SSI + 0x28) & 8, 'RFNE while frames remain');
    out.push(mcu.readUint8(SSI + 0x60));
  }
  mcu.writeUint32(SSI + 0x08, 0);
  mcu.writeUint32(SSI + 0x04, 0);
  return out.slice(dummy);
}

function exitXip(mcu) {
  // As the ROM shim's flash_exit_xip leaves the SSI: 8-bit frames, TX and RX, enabled.
  mcu.writeUint32(SSI + 0x08, 0);
  mcu.writeUint32(SSI + 0x00, 7 << 16);
  mcu.writeUint32(SSI + 0x08, 1);
}

test('flash unique id (0x4B, 4 dummy bytes) and JEDEC id (0x9F) through the SSI as embassy-rp reads them', (t) => {
  const { mcu } = chipIn(t);
  // boot2 leaves the SSI in quad XIP mode with 32-bit frames first.
  mcu.writeUint32(SSI + 0x00, (2 << 21) | (31 << 16) | (3 << 8));
  exitXip(mcu);
  assert.deepStrictEqual(embassyRead(mcu, [0x4b], 4, 8), [1, 2, 3, 4, 5, 6, 7, 8]);
  exitXip(mcu);
  assert.deepStrictEqual(embassyRead(mcu, [0x9f], 0, 3), [0xef, 0x40, 0x15]);
});

test('pico-sdk style flash_do_cmd: CS forced low through IO_QSPI, TX and RX byte for byte', (t) => {
  const { mcu, flashFile } = chipIn(t);
  flashFile.xip.set([0xde, 0xad, 0xbe, 0xef], 0x123);
  exitXip(mcu);
  const SS_CTRL = 0x4001800c;
  const transfer = (bytes) => {
    mcu.writeUint32(SS_CTRL, 2 << 8); // OUTOVER low: CS asserted
    const rx = [];
    for (const b of bytes) {
      mcu.readUint32(SSI + 0x28); // the SR polls between bytes do not end the transaction
      mcu.writeUint32(SSI + 0x60, b);
      rx.push(mcu.readUint32(SSI + 0x60));
    }
    mcu.writeUint32(SS_CTRL, 3 << 8); // CS released
    return rx;
  };
  assert.deepStrictEqual(transfer([0x03, 0x00, 0x01, 0x23, 0, 0, 0, 0]).slice(4), [0xde, 0xad, 0xbe, 0xef]);
  assert.deepStrictEqual(transfer([0x4b, 0, 0, 0, 0, 0, 0]).slice(5), [1, 2]);
  // Write enable, sector erase through the SSI: the same flash file, write-through included.
  transfer([0x06]);
  transfer([0x20, 0x00, 0x00, 0x00]);
  assert.strictEqual(flashFile.xip[0x123], 0xff);
  assert.strictEqual(flashFile.ops, 1);
});
