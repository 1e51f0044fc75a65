'use strict';
// End to end with real firmware: the probe firmware (probe-fw/, embassy-rp 0.10) and, when given,
// Outpost's node images (bootloader + application). Building firmware takes minutes, so these run
// when the images are named:
//   OUTPOST_EMU_PROBE_ELF=/path/to/outpost-emu-probe          (see README.md, "Probe firmware")
//   OUTPOST_EMU_NODE_IMAGES=sensor-fw/rp2040/target/images    (outpost-bootloader.elf + outpost-node-*.elf)
const test = require('node:test');
const assert = require('node:assert');
const fs = require('fs');
const path = require('path');
const { execFileSync } = require('child_process');
const { Session, RUN_JS } = require('../testing/session');
const { rawWords, crc8 } = require('../lib/sht3x');
const { temperatureAdcCode } = require('../lib/chip');
const { tempDir } = require('../testing/fixtures');

const probe = process.env.OUTPOST_EMU_PROBE_ELF;
const nodeImages = process.env.OUTPOST_EMU_NODE_IMAGES;

function composeFlash(t, images) {
  const flash = path.join(tempDir(t), 'flash.bin');
  execFileSync(process.execPath, [RUN_JS, 'compose', '--out', flash, ...images], { stdio: 'pipe' });
  return flash;
}

const PROBE_SKIP = probe ? false : 'OUTPOST_EMU_PROBE_ELF not set (build probe-fw to run this)';

test('probe firmware: boots at power-on, echoes, reads uid, JEDEC id, SHT3x, ADC, random bits', { skip: PROBE_SKIP }, async (t) => {
  const flash = composeFlash(t, [probe]);
  const s = new Session(['--flash', flash, '--uid', '0011223344556677', '--sht3x-temp', '30.25', '--sht3x-rh', '61', '--chip-temp', '45']);
  t.after(() => s.kill('SIGKILL'));
  await s.waitFor(/probe up reason=none chip_reset=00000100 scratch0=00000000\r\n/);
  await s.ask('hi, lemon', /hi, lemon/); // bytes that are not probe commands come back
  const [, uid, jedec] = await s.ask('u', /uid=(\w+) jedec=(\w+)\r\n/);
  assert.strictEqual(uid, '0011223344556677');
  assert.strictEqual(jedec, '00ef4015');
  const [, sht] = await s.ask('s', /sht=(\w+)\r\n/);
  const { t: rawT, rh } = rawWords(30.25, 61);
  const expected = [rawT >> 8, rawT & 0xff, crc8([rawT >> 8, rawT & 0xff]), rh >> 8, rh & 0xff, crc8([rh >> 8, rh & 0xff])];
  assert.strictEqual(sht, Buffer.from(expected).toString('hex'));
  const [, adc] = await s.ask('t', /adc4=(\d+)\r\n/);
  assert.strictEqual(Number(adc), temperatureAdcCode(45));
  const [, r1] = await s.ask('r', /rng=(\w+)\r\n/);
  const [, r2] = await s.ask('r', /rng=(\w+)\r\n/);
  assert.notStrictEqual(r1, r2);
  // 1000 bytes through BufferedUart's 256-byte buffer and the 32-entry FIFO: none lost.
  const from = s.out.length;
  await s.ask('x', /burst done\r\n/);
  assert.strictEqual((s.out.slice(from).match(/X/g) || []).length, 1000);
  await s.ask('b', /marks done/);
  await s.waitFor(/emu: mark 7 cycles=\d+ value=499500/, { stream: 'err' });
  const { code } = await s.kill('SIGTERM');
  assert.strictEqual(code, 0);
});

test('probe firmware: watchdog and SYSRESETREQ resets keep flash and scratch; a killed process keeps the flash', { skip: PROBE_SKIP }, async (t) => {
  const flash = composeFlash(t, [probe]);
  let s = new Session(['--flash', flash, '--batch']);
  await s.waitFor(/probe up reason=none/);
  await s.ask('p', /prog ok\r\n/);
  s.send('w');
  await s.waitFor(/probe up reason=forced chip_reset=00000000 scratch0=c0ffee01\r\n/);
  await s.waitFor(/emu: reset watchdog-force at cycle \d+/, { stream: 'err' });
  s.send('d');
  await s.waitFor(/probe up reason=timeout chip_reset=00000000 scratch0=c0ffee02\r\n/);
  const [, at] = await s.waitFor(/emu: reset watchdog-timer at cycle \d+ \(([\d.]+) s\)/, { stream: 'err' });
  assert.ok(Number(at) > 0.5 && Number(at) < 0.6, `500 ms watchdog fired at ${at} s`);
  s.send('a');
  await s.waitFor(/probe up reason=none chip_reset=00000000 scratch0=c0ffee03\r\n/);
  assert.match((await s.ask('f', /flash=(\w+)/))[1], /^70726f626521/, 'the flash survived three resets');
  await s.kill('SIGKILL'); // power pulled
  s = new Session(['--flash', flash, '--batch']);
  t.after(() => s.kill('SIGKILL'));
  await s.waitFor(/probe up reason=none chip_reset=00000100 scratch0=00000000/);
  assert.match((await s.ask('f', /flash=(\w+)/))[1], /^70726f626521/);
});

test('probe firmware: a power cut in a flash program exits 75 and leaves the torn page', { skip: PROBE_SKIP }, async (t) => {
  const flash = composeFlash(t, [probe]);
  const s = new Session(['--flash', flash, '--batch', '--power-cut-after-flash-ops', '1']);
  await s.waitFor(/probe up/);
  s.send('p');
  const { code } = await s.exited;
  assert.strictEqual(code, 75);
  assert.match(s.err, /emu: power cut at flash op 2 \(program 0x101f0000\)/);
  const page = fs.readFileSync(flash).subarray(0x1f0000, 0x1f0100);
  const written = Uint8Array.from({ length: 256 }, (_, i) => i);
  written.set(Buffer.from('probe!'));
  const prefix = page.findIndex((b, i) => b !== written[i]);
  assert.ok(prefix >= 0 && page.subarray(prefix).every((b) => b === 0xff), `a programmed prefix (${prefix} bytes), then erased bytes`);
});

const NODE_SKIP = nodeImages ? false : 'OUTPOST_EMU_NODE_IMAGES not set';

test("Outpost's node: bootloader + application boot and the node speaks on UART0 with the flash's unique id", { skip: NODE_SKIP }, async (t) => {
  const app = fs.readdirSync(nodeImages).find((f) => /^outpost-node-.*\.elf$/.test(f));
  const flash = composeFlash(t, [path.join(nodeImages, 'outpost-bootloader.elf'), path.join(nodeImages, app)]);
  const s = new Session(['--flash', flash, '--batch', '--uid', 'a1a2a3a4a5a6a7a8']);
  t.after(() => s.kill('SIGKILL'));
  await s.waitFor(/\xa1\xa2\xa3\xa4\xa5\xa6\xa7\xa8/);
});

test("Outpost's node: 20 s without a watchdog reset, and it comes back after a power cut in its first flash write", { skip: NODE_SKIP }, (t) => {
  const { spawnSync } = require('child_process');
  const app = fs.readdirSync(nodeImages).find((f) => /^outpost-node-[\d.]+\.elf$/.test(f)) ?? fs.readdirSync(nodeImages).find((f) => /^outpost-node-.*\.elf$/.test(f));
  const flash = composeFlash(t, [path.join(nodeImages, 'outpost-bootloader.elf'), path.join(nodeImages, app)]);
  const run = (...args) => spawnSync(process.execPath, [RUN_JS, 'run', '--flash', flash, '--batch', '--after-eof', '1000', ...args], { input: '', encoding: 'latin1', timeout: 60000 });
  const cut = run('--power-cut-after-flash-ops', '1', '--max-seconds', '5');
  assert.strictEqual(cut.status, 75, cut.stderr);
  const back = run('--max-seconds', '20', '--stats');
  assert.strictEqual(back.status, 0, back.stderr);
  assert.doesNotMatch(back.stderr, /emu: reset/);
  assert.match(back.stdout, /\xe6\x61\x4c\x31\x1b\x3a\x2f\x21/, 'frames with the default uid');
});

