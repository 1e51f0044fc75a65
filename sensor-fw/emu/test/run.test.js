'use strict';
// The `run` command on hand-assembled programs in boot2 (the first code the ROM shim runs):
// marks, stray BKPTs, resets, limits, pacing. No firmware build needed.
const test = require('node:test');
const assert = require('node:assert');
const fs = require('fs');
const path = require('path');
const { spawnSync } = require('child_process');
const { boot2Crc } = require('../lib/rom-shim');
const { tempDir } = require('../testing/fixtures');
const { RUN_JS } = require('../testing/session');

/** A 64 KiB flash whose boot2 is `words` (Thumb halfwords / 32-bit literals as [value, 32]). */
function boot2Flash(t, words) {
  const boot2 = Buffer.alloc(256);
  let at = 0;
  for (const w of words) {
    if (Array.isArray(w)) {
      boot2.writeUInt32LE(w[0] >>> 0, at);
      at += 4;
    } else {
      boot2.writeUInt16LE(w, at);
      at += 2;
    }
  }
  boot2.writeUInt32LE(boot2Crc(boot2.subarray(0, 252)), 252);
  const flash = Buffer.alloc(64 * 1024, 0xff);
  boot2.copy(flash, 0);
  const file = path.join(tempDir(t), 'flash.bin');
  fs.writeFileSync(file, flash);
  return file;
}

function run(flash, ...args) {
  return spawnSync(process.execPath, [RUN_JS, 'run', '--flash', flash, ...args], { encoding: 'utf8', input: '', timeout: 20000 });
}

const MOVS_R0_5 = 0x2005;
const MOVS_R1_9 = 0x2109;
const NOP = 0xbf00;
const WFI = 0xbf30;
const B_SELF = 0xe7fe;
const B_BACK_1 = 0xe7fd; // b to the instruction before

test('BKPT #0x70 / #0x71 report the cycles between them; another BKPT stops the run with its PC', (t) => {
  const flash = boot2Flash(t, [MOVS_R0_5, 0xbe70, MOVS_R1_9, NOP, NOP, 0xbe71, 0xbe42]);
  const r = run(flash, '--batch', '--after-eof', '1');
  assert.match(r.stderr, /^emu: mark 5 cycles=3 value=9$/m);
  assert.match(r.stderr, /^emu: firmware stopped: BKPT #0x42 at PC 0x20041f0c/m);
  assert.strictEqual(r.status, 70);
  assert.strictEqual(r.stdout, '', 'nothing but UART bytes on stdout');
});

test('SYSRESETREQ restarts the chip from the flash, again and again; --max-cycles stops it', (t) => {
  // ldr r0, =0xE000ED0C; ldr r1, =0x05FA0004; str r1, [r0]; b .
  const flash = boot2Flash(t, [0x4802, 0x4903, 0x6001, B_SELF, NOP, NOP, [0xe000ed0c, 32], [0x05fa0004, 32]]);
  const r = run(flash, '--batch', '--max-cycles', '200', '--after-eof', '1');
  const resets = r.stderr.match(/^emu: reset sysresetreq at cycle \d+/gm) || [];
  assert.ok(resets.length >= 5, r.stderr);
  assert.match(r.stderr, /^emu: stopped after 20\d cycles$/m);
  assert.strictEqual(r.status, 0);
});

test('--power-cut-at-reset N cuts the power instead of the N-th reset', (t) => {
  const flash = boot2Flash(t, [0x4802, 0x4903, 0x6001, B_SELF, NOP, NOP, [0xe000ed0c, 32], [0x05fa0004, 32]]);
  const r = run(flash, '--batch', '--power-cut-at-reset', '3', '--after-eof', '10');
  assert.strictEqual(r.status, 75, r.stderr);
  const resets = r.stderr.match(/^emu: reset sysresetreq at cycle \d+/gm) || [];
  assert.strictEqual(resets.length, 2, r.stderr);
  assert.match(r.stderr, /^emu: power cut at reset 3 \(sysresetreq\) at cycle \d+$/m);
});

test('--power-cut-at-cycle exits 75', (t) => {
  const flash = boot2Flash(t, [NOP, B_BACK_1]);
  const r = run(flash, '--batch', '--power-cut-at-cycle', '5000', '--after-eof', '10');
  assert.strictEqual(r.status, 75);
  assert.match(r.stderr, /^emu: power cut at cycle 50\d\d$/m);
});

test('--realtime never lets emulated time run ahead of the wall clock', (t) => {
  const flash = boot2Flash(t, [WFI, B_BACK_1]);
  const r = run(flash, '--realtime', '--max-seconds', '0.3', '--stats', '--after-eof', '10');
  assert.strictEqual(r.status, 0, r.stderr);
  const [, emulated, wall] = r.stderr.match(/emulated=([\d.]+)s wall=([\d.]+)s/);
  assert.ok(Number(emulated) >= 0.3 && Number(wall) >= Number(emulated), r.stderr);
});

test('stdin ending ends the run (exit 0); a flash without a valid boot2 stops like the bootrom would', (t) => {
  const flash = boot2Flash(t, [WFI, B_BACK_1]);
  const r = run(flash, '--batch');
  assert.strictEqual(r.status, 0);
  assert.match(r.stderr, /^emu: input closed$/m);
  const blank = path.join(tempDir(t), 'blank.bin');
  fs.writeFileSync(blank, Buffer.alloc(64 * 1024, 0xff));
  const b = run(blank, '--batch', '--after-eof', '1');
  assert.strictEqual(b.status, 70);
  assert.match(b.stderr, /boot2 .* USB boot/);
});

test('bad arguments get a usage message and exit 2', (t) => {
  const flash = boot2Flash(t, [WFI, B_BACK_1]);
  for (const args of [['--uid', 'xyz'], ['--baud', '-1'], ['--frobnicate'], ['--batch', '--realtime']]) {
    const r = run(flash, ...args);
    assert.strictEqual(r.status, 2, args.join(' '));
    assert.match(r.stderr, /^emu: .*\nusage:/);
  }
});

test('SEV sets the event register, so the next WFE falls through (embassy executor self-wake)', (t) => {
  const flash = boot2Flash(t, [0xbf40 /* SEV */, 0xbf20 /* WFE */, 0xbe42]);
  const r = run(flash, '--batch', '--after-eof', '0.1');
  assert.match(r.stderr, /^emu: firmware stopped: BKPT #0x42 at PC 0x20041f04/m, 'WFE returned at once');
  assert.strictEqual(r.status, 70);
});

test('UART1 lines (the dev console) become `emu: uart1:` lines, control bytes escaped', (t) => {
  const { Emulator } = require('../lib/emulator');
  const flash = boot2Flash(t, [WFI, B_BACK_1]);
  const notes = [];
  const e = new Emulator({ flashPath: flash, uid: new Uint8Array(8), baud: 0, realtime: false, sht3x: { present: true }, chipCelsius: 27, output: () => {}, note: (l) => notes.push(l) });
  t.after(() => e.flashFile.close());
  for (const b of Buffer.from('status ok\r\n\x01x\n')) e.lines[1].sink(b);
  assert.deepStrictEqual(notes, ['uart1: status ok', 'uart1: \\x01x']);
});
