'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { Sht3xSensor, crc8, rawWords } = require('../lib/sht3x');
const { chipIn } = require('../testing/fixtures');

test('CRC-8 of the datasheet (0xBEEF -> 0x92)', () => {
  assert.strictEqual(crc8([0xbe, 0xef]), 0x92);
});

test('raw words match the node driver (sht3x.rs raw_temperature / raw_humidity)', () => {
  // raw_temperature(2150) = ((2150 + 4500) * 65535 + 8750) / 17500 = 24903; raw_humidity(4500) = 29491
  assert.deepStrictEqual(rawWords(21.5, 45), { t: 24903, rh: 29491 });
});

test('single shot with clock stretching answers T, CRC, RH, CRC after the measurement time', () => {
  const s = new Sht3xSensor({ celsius: 21.5, humidity: 45 });
  assert.ok(s.command([0x2c, 0x06], 0));
  const header = s.readHeader(1e6);
  assert.deepStrictEqual(header, { ack: true, delayNanos: 14.5e6 });
  const bytes = Array.from({ length: 6 }, () => s.readByte());
  assert.deepStrictEqual(bytes, [0x61, 0x47, crc8([0x61, 0x47]), 0x73, 0x33, crc8([0x73, 0x33])]);
  s.stop(true);
  assert.deepStrictEqual(s.readHeader(20e6), { ack: false }, 'no second answer without a new command');
});

test('without clock stretching the read header is NACKed until the result is ready', () => {
  const s = new Sht3xSensor();
  s.command([0x24, 0x00], 0);
  assert.deepStrictEqual(s.readHeader(10e6), { ack: false });
  assert.deepStrictEqual(s.readHeader(16e6), { ack: true, delayNanos: 0 });
});

test('status register, clear status and soft reset', () => {
  const s = new Sht3xSensor();
  s.command([0xf3, 0x2d], 0);
  s.readHeader(0);
  assert.deepStrictEqual([s.readByte(), s.readByte(), s.readByte()], [0x00, 0x10, crc8([0x00, 0x10])]);
  s.stop(true);
  s.command([0x30, 0x41], 0);
  s.command([0xf3, 0x2d], 0);
  s.readHeader(0);
  assert.deepStrictEqual([s.readByte(), s.readByte()], [0, 0]);
  s.stop(true);
  s.command([0x30, 0xa2], 0);
  s.command([0xf3, 0x2d], 0);
  s.readHeader(0);
  assert.deepStrictEqual([s.readByte(), s.readByte()], [0x00, 0x10], 'reset detected again after a soft reset');
});

// Drives rp2040js's DW_apb_i2c registers as a firmware driver does.
const I2C0 = 0x40044000;
function i2cTransfer(chip, address, { write = [], read = 0 }) {
  const { mcu } = chip;
  mcu.writeUint32(I2C0 + 0x6c, 0); // IC_ENABLE = 0
  mcu.writeUint32(I2C0 + 0x04, address); // IC_TAR
  mcu.writeUint32(I2C0 + 0x6c, 1);
  write.forEach((b, i) => mcu.writeUint32(I2C0 + 0x10, b | (i === write.length - 1 && !read ? 1 << 9 : 0)));
  for (let i = 0; i < read; i++) mcu.writeUint32(I2C0 + 0x10, (1 << 8) | (i === read - 1 ? 1 << 9 : 0));
  const out = [];
  for (let spins = 0; spins < 100 && out.length < read; spins++) {
    while (mcu.readUint32(I2C0 + 0x78) > 0) out.push(mcu.readUint32(I2C0 + 0x10) & 0xff);
    mcu.clock.tick(1e6);
  }
  const abort = mcu.readUint32(I2C0 + 0x80); // IC_TX_ABRT_SOURCE
  mcu.readUint32(I2C0 + 0x54); // clear
  return { out, abort };
}

test('on the chip: I2C0 write 0x2C06, read 6 bytes from 0x44; other addresses and --no-sht3x NACK', (t) => {
  const chip = chipIn(t, { sensor: new Sht3xSensor({ celsius: -10, humidity: 99 }) });
  assert.strictEqual(i2cTransfer(chip, 0x44, { write: [0x2c, 0x06] }).abort, 0);
  const { out, abort } = i2cTransfer(chip, 0x44, { read: 6 });
  assert.strictEqual(abort, 0);
  const { t: rawT, rh } = rawWords(-10, 99);
  assert.deepStrictEqual(out, [rawT >> 8, rawT & 0xff, crc8([rawT >> 8, rawT & 0xff]), rh >> 8, rh & 0xff, crc8([rh >> 8, rh & 0xff])]);
  assert.strictEqual(i2cTransfer(chip, 0x45, { write: [0x2c, 0x06] }).abort & 1, 1, 'ABRT_7B_ADDR_NOACK');
  const absent = chipIn(t, { present: false });
  assert.strictEqual(i2cTransfer(absent, 0x44, { write: [0x2c, 0x06] }).abort & 1, 1);
});

test('an address nobody acknowledges leaves TX_EMPTY and STOP_DET set, as embassy-rp waits for both', (t) => {
  // embassy-rp's blocking write spins on RAW_INTR_STAT.TX_EMPTY, then on STOP_DET, before it
  // reads the abort reason: without both a board with no sensor hangs until its watchdog.
  const absent = chipIn(t, { present: false });
  const { abort } = i2cTransfer(absent, 0x44, { write: [0x2c, 0x06] });
  assert.strictEqual(abort & 1, 1, 'ABRT_7B_ADDR_NOACK');
  const raw = absent.mcu.readUint32(I2C0 + 0x34); // IC_RAW_INTR_STAT
  assert.ok(raw & (1 << 4), `TX_EMPTY in ${raw.toString(16)}`);
  assert.ok(raw & (1 << 9), `STOP_DET in ${raw.toString(16)}`);
});
