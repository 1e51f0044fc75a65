'use strict';
const test = require('node:test');
const assert = require('node:assert');
const fs = require('fs');
const { FlashFile, FlashError, PowerCut, parseSize } = require('../lib/flash-file');
const { flashFileIn } = require('../testing/fixtures');

test('program only clears bits (NOR) and an erase sets the sector back to 0xFF', (t) => {
  const { flash } = flashFileIn(t);
  flash.program(0x1000, new Uint8Array(256).fill(0xf0));
  flash.program(0x1000, new Uint8Array(256).fill(0x3c));
  assert.strictEqual(flash.xip[0x1000], 0x30, 'programming over programmed bytes ANDs them');
  flash.erase(0x1000, 4096);
  assert.ok(flash.xip.subarray(0x1000, 0x2000).every((b) => b === 0xff));
});

test('every erase and program is in the file when the call returns', (t) => {
  const { file, flash } = flashFileIn(t);
  const page = Uint8Array.from({ length: 256 }, (_, i) => i);
  flash.program(0x2100, page);
  const onDisk = fs.readFileSync(file);
  assert.deepStrictEqual(Uint8Array.from(onDisk.subarray(0x2100, 0x2200)), page);
  flash.erase(0x2000, 4096);
  assert.ok(fs.readFileSync(file).subarray(0x2000, 0x3000).every((b) => b === 0xff));
  // A second process opening the file sees the same flash.
  const again = new FlashFile(file);
  t.after(() => again.close());
  assert.strictEqual(again.size, 64 * 1024);
  assert.strictEqual(again.xip[0x2100], 0xff);
});

test('misaligned or out-of-range operations are refused and change nothing', (t) => {
  const { file, flash } = flashFileIn(t);
  assert.throws(() => flash.erase(0x800, 4096), FlashError);
  assert.throws(() => flash.erase(0, 0x11000), /beyond the 65536-byte flash/);
  assert.throws(() => flash.program(0x80, new Uint8Array(256)), /not aligned to 256/);
  assert.ok(fs.readFileSync(file).every((b) => b === 0xff));
  assert.strictEqual(flash.ops, 0);
});

test('operations are counted per 4 KiB sector erase and per 256-byte page program', (t) => {
  const { flash } = flashFileIn(t);
  flash.erase(0, 0x10000);
  flash.program(0, new Uint8Array(1024));
  assert.deepStrictEqual([flash.ops, flash.erases, flash.programs], [20, 16, 4]);
});

test('a power cut tears the erase it lands in: earlier sectors erased, that one random, later untouched', (t) => {
  const content = new Uint8Array(3 * 4096).fill(0x00);
  const random = (n) => new Uint8Array(n).fill(0x5a);
  const { file, flash } = flashFileIn(t, { bytes: content, cutAfterOps: 1, random });
  assert.throws(() => flash.erase(0, 3 * 4096), (e) => e instanceof PowerCut && e.op === 2 && e.kind === 'erase' && e.offset === 4096);
  const onDisk = fs.readFileSync(file);
  assert.ok(onDisk.subarray(0, 4096).every((b) => b === 0xff), 'first sector erased');
  assert.ok(onDisk.subarray(4096, 8192).every((b) => b === 0x5a), 'torn sector holds the random bytes');
  assert.ok(onDisk.subarray(8192, 12288).every((b) => b === 0x00), 'third sector untouched');
  assert.match(new PowerCut(2, 'erase', 4096).message, /^power cut at flash op 2 \(erase 0x10001000\)$/);
});

test('a power cut tears a program: a prefix of the page is programmed, the rest is not', (t) => {
  const { file, flash } = flashFileIn(t, { cutAfterOps: 0, random: () => Uint8Array.of(100) });
  assert.throws(() => flash.program(0x300, new Uint8Array(256)), (e) => e instanceof PowerCut && e.op === 1 && e.kind === 'program');
  const onDisk = fs.readFileSync(file);
  assert.ok(onDisk.subarray(0x300, 0x300 + 100).every((b) => b === 0x00));
  assert.ok(onDisk.subarray(0x300 + 100, 0x400).every((b) => b === 0xff));
});

test('sizes', () => {
  assert.strictEqual(parseSize('2M'), 2 * 1024 * 1024);
  assert.strictEqual(parseSize('512K'), 512 * 1024);
  assert.strictEqual(parseSize('0x1000'), 4096);
  assert.throws(() => parseSize('two'), FlashError);
});

test('with flash timing, time passes per operation, and a reset meanwhile tears the operation', (t) => {
  const { ResetDuringFlash, FLASH_TIMINGS } = require('../lib/flash-file');
  const { file, flash } = flashFileIn(t, { bytes: new Uint8Array(8192), timing: FLASH_TIMINGS.typical, random: (n) => new Uint8Array(n).fill(0x77) });
  let elapsed = 0;
  flash.busy = (nanos) => {
    elapsed += nanos;
    return elapsed > 50e6; // the watchdog fires during the second sector
  };
  assert.throws(() => flash.erase(0, 8192), (e) => e instanceof ResetDuringFlash && e.op === 2 && e.offset === 4096);
  assert.strictEqual(elapsed, 90e6);
  const onDisk = fs.readFileSync(file);
  assert.ok(onDisk.subarray(0, 4096).every((b) => b === 0xff));
  assert.ok(onDisk.subarray(4096, 8192).every((b) => b === 0x77), 'the interrupted erase is torn');
});
