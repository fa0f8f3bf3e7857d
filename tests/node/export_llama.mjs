// export_llama.mjs OUTDIR CASES - the LLaMA-1/2 reference from llama-tokenizer-js 1.2.2.
// Writes OUTDIR/llama_tokenizer.json: the package's 32000-piece vocabulary and its merges (in
// the package's priority order) as a Hugging Face BPE tokenizer.json; OUTDIR/llama_ids.txt:
// the package's encode(s, no BOS, with the dummy-prefix space) of every string of CASES;
// OUTDIR/llama_pkg_cases.txt: the package's own test cases (hex text TAB expected ids, BOS
// included), taken from the literal expectations in its source, not from running it.
import { writeFileSync } from 'node:fs';
import llamaTokenizer from 'llama-tokenizer-js';
import { readCases, writeIdLines, hex } from './common.mjs';

const [outDir, casesPath] = process.argv.slice(2);
const tok = llamaTokenizer;
const vocab = {};
tok.vocabById.forEach((piece, id) => { vocab[piece] = id; });
// Map keys are "left right" in insertion (= priority) order.
const merges = Array.from(tok.merges.keys());
const special = (id, content) => ({ id, content, single_word: false, lstrip: false, rstrip: false,
                                    normalized: false, special: true });
const json = {
    version: '1.0',
    added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
    normalizer: { type: 'Sequence', normalizers: [
        { type: 'Prepend', prepend: '\u2581' },
        { type: 'Replace', pattern: { String: ' ' }, content: '\u2581' } ] },
    pre_tokenizer: null,
    model: { type: 'BPE', unk_token: '<unk>', fuse_unk: true, byte_fallback: true, vocab, merges },
};
writeFileSync(`${outDir}/llama_tokenizer.json`, JSON.stringify(json));

const cases = readCases(casesPath);
writeIdLines(`${outDir}/llama_ids.txt`, cases.map((s) => tok.encode(s, false, true)));

// The package's test cases: testCase("text", [ids]) literals in defaultTests.
const src = Object.getPrototypeOf(tok).defaultTests.toString();
const re = /testCase\(\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')\s*,\s*\[([\d,\s]*)\]\s*\)/g;
const rows = [];
for (const m of src.matchAll(re)) {
    const text = Function(`return ${m[1]};`)();
    const ids = m[2].split(',').map((x) => x.trim()).filter((x) => x.length).map(Number);
    rows.push(`${hex(text)}\t${ids.join(' ')}`);
}
writeFileSync(`${outDir}/llama_pkg_cases.txt`, rows.join('\n') + '\n');
console.log(`export_llama: ${Object.keys(vocab).length} pieces, ${merges.length} merges, ` +
            `${cases.length} strings, ${rows.length} package cases`);
