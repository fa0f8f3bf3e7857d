// common.mjs - shared by the reference scripts: reads the test strings written by
// tests/test_tokenizer.c (one string per line, UTF-8 bytes in hex) and writes result lines.
import { readFileSync, writeFileSync } from 'node:fs';

// Returns the strings of a cases file (hex lines; an empty line is the empty string).
export function readCases(path) {
    const lines = readFileSync(path, 'utf8').split('\n');
    if (lines.length && lines[lines.length - 1] === '') lines.pop();
    return lines.map((h) => Buffer.from(h, 'hex').toString('utf8'));
}

// Writes one line of space-separated ids per entry.
export function writeIdLines(path, rows) {
    writeFileSync(path, rows.map((ids) => ids.join(' ')).join('\n') + '\n');
}

export function hex(s) {
    return Buffer.from(s, 'utf8').toString('hex');
}
