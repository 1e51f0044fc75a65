#!/usr/bin/env node
// Outpost's RP2040 emulator harness (rp2040js): compose a flash file from firmware images, run a
// node's firmware from it with UART0 on stdio. See README.md.
'use strict';

const fs = require('fs');
const { compose, parseImageArg, ImageError } = require('./lib/images');
const { parseSize, checkSize, FlashError } = require('./lib/flash-file');
const { Emulator } = require('./lib/emulator');

const USAGE = `usage:
  node run.js compose --out FLASH [--size 2M] IMAGE[@0xADDR]...
  node run.js run --flash FLASH [--uid HEX16] [--baud N] [--realtime | --batch]
      [--max-seconds S] [--max-cycles N] [--after-eof S] [--stats] [--log-flash] [--verbose]
      [--power-cut-after-flash-ops N] [--power-cut-at-cycle N] [--power-cut-at-reset N] [--flash-timing typical|max]
      [--sht3x-temp C] [--sht3x-rh PERCENT] [--no-sht3x] [--chip-temp C]`;

/** The flash chip's unique id when --uid is not given (any fixed value; tests pass their own). */
const DEFAULT_UID = 'e6614c311b3a2f21';

class UsageError extends Error {}

function parseArgs(argv, spec) {
  const options = {};
  const rest = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith('--')) {
      rest.push(arg);
      continue;
    }
    const name = arg.slice(2);
    if (!(name in spec)) throw new UsageError(`unknown option ${arg}`);
    if (spec[name] === 'flag') options[name] = true;
    else {
      if (i + 1 >= argv.length) throw new UsageError(`${arg} needs a value`);
      options[name] = argv[++i];
    }
  }
  return { options, rest };
}

function number(options, name, { min = 0, integer = false } = {}) {
  if (options[name] === undefined) return undefined;
  const value = Number(options[name]);
  if (!Number.isFinite(value) || value < min || (integer && !Number.isInteger(value))) {
    throw new UsageError(`--${name} ${options[name]}: expected ${integer ? 'an integer' : 'a number'} >= ${min}`);
  }
  return value;
}

function composeCommand(argv) {
  const { options, rest } = parseArgs(argv, { out: 'value', size: 'value' });
  if (!options.out) throw new UsageError('compose needs --out FLASH');
  if (!rest.length) throw new UsageError('compose needs at least one image');
  const size = parseSize(options.size ?? '2M');
  checkSize(size, '--size');
  const { flash, placed } = compose(size, rest.map(parseImageArg));
  fs.writeFileSync(options.out, flash);
  for (const p of placed) process.stderr.write(`emu: ${p.path}: 0x${p.address.toString(16)} +0x${p.length.toString(16)}\n`);
  return 0;
}

async function runCommand(argv) {
  const spec = {
    flash: 'value',
    uid: 'value',
    baud: 'value',
    realtime: 'flag',
    batch: 'flag',
    'max-seconds': 'value',
    'max-cycles': 'value',
    'after-eof': 'value',
    stats: 'flag',
    'log-flash': 'flag',
    verbose: 'flag',
    'power-cut-after-flash-ops': 'value',
    'power-cut-at-cycle': 'value',
    'power-cut-at-reset': 'value',
    'sht3x-temp': 'value',
    'sht3x-rh': 'value',
    'no-sht3x': 'flag',
    'chip-temp': 'value',
    'flash-timing': 'value',
  };
  const { options, rest } = parseArgs(argv, spec);
  if (rest.length) throw new UsageError(`unexpected argument ${rest[0]}`);
  if (!options.flash) throw new UsageError('run needs --flash FLASH (make one with `compose`)');
  if (options.realtime && options.batch) throw new UsageError('--realtime and --batch exclude each other');
  const uidHex = options.uid ?? DEFAULT_UID;
  if (!/^[0-9a-fA-F]{16}$/.test(uidHex)) throw new UsageError(`--uid ${uidHex}: expected 16 hex digits`);

  if (options['flash-timing'] !== undefined && !['typical', 'max'].includes(options['flash-timing'])) {
    throw new UsageError(`--flash-timing ${options['flash-timing']}: expected typical or max`);
  }
  const note = (line) => process.stderr.write(`emu: ${line}\n`);
  const emulator = new Emulator({
    flashPath: options.flash,
    uid: Uint8Array.from(Buffer.from(uidHex, 'hex')),
    baud: number(options, 'baud', { integer: true }) ?? 115200,
    realtime: !options.batch,
    maxSeconds: number(options, 'max-seconds'),
    maxCycles: number(options, 'max-cycles', { integer: true }),
    afterEofSeconds: number(options, 'after-eof') ?? 0,
    cutAfterOps: number(options, 'power-cut-after-flash-ops', { integer: true }),
    cutAtCycle: number(options, 'power-cut-at-cycle', { integer: true }),
    cutAtReset: number(options, 'power-cut-at-reset', { integer: true, min: 1 }),
    sht3x: {
      present: !options['no-sht3x'],
      celsius: number(options, 'sht3x-temp', { min: -45 }) ?? 21.5,
      humidity: number(options, 'sht3x-rh') ?? 45,
    },
    chipCelsius: number(options, 'chip-temp', { min: -100 }) ?? 27,
    stats: !!options.stats,
    logFlash: !!options['log-flash'],
    flashTiming: options['flash-timing'],
    verbose: !!options.verbose,
    output: (bytes) => process.stdout.write(bytes),
    note,
  });
  if (emulator.o.sht3x.humidity > 100) throw new UsageError('--sht3x-rh is a percentage, 0..100');

  process.stdin.on('data', (data) => emulator.input(data));
  process.stdin.on('end', () => emulator.endOfInput());
  process.stdin.on('error', () => emulator.endOfInput());
  const code = emulator.run();
  process.on('SIGTERM', () => emulator.finish(0, 'SIGTERM'));
  process.on('SIGINT', () => emulator.finish(130, 'SIGINT'));
  return code;
}

async function main() {
  const [command, ...argv] = process.argv.slice(2);
  try {
    if (command === 'compose') return composeCommand(argv);
    if (command === 'run') return await runCommand(argv);
    throw new UsageError(command ? `unknown command ${command}` : 'no command');
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`emu: ${e.message}\n${USAGE}\n`);
      return 2;
    }
    if (e instanceof ImageError || e instanceof FlashError || (e && (e.code === 'ENOENT' || e.code === 'EACCES' || e.code === 'EISDIR'))) {
      process.stderr.write(`emu: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
}

main().then((code) => {
  // stdout writes to pipes and files are synchronous on Linux: nothing is lost by exiting now.
  process.exit(code);
});
