// face-api.js (@vladmandic/face-api 1.7.15, MIT) expression and age/gender nets as training-time teachers.
// Called by training/teachers/faceapi.py, which prepares the crops; never used at serving time.
//   node faceapi_teacher.cjs NODE_MODULES CROPS.u8 N SIZE OUT.f32 [emotion|age_gender|both]
// CROPS.u8: N x SIZE x SIZE x 3 RGB bytes (SIZE = 112, the nets' input). OUT.f32: N rows of 9 float32:
// the 7 expression probabilities (neutral, happy, sad, angry, fearful, disgusted, surprised), age in years,
// P(female); the rows of a net that was not asked for stay 0. Runs on tfjs's single-threaded WebAssembly backend (tfjs-node cannot install offline).
'use strict';
const fs = require('fs');
const path = require('path');

async function main() {
  const [nodeModules, cropsPath, nArg, sizeArg, outPath, mode = 'both'] = process.argv.slice(2);
  const wantEmotion = mode !== 'age_gender', wantAgeGender = mode !== 'emotion';
  const n = Number(nArg), size = Number(sizeArg);
  const req = (name) => require(path.join(nodeModules, name));
  const tf = req('@tensorflow/tfjs');
  const wasm = req('@tensorflow/tfjs-backend-wasm');
  const faceapi = req('@vladmandic/face-api/dist/face-api.node-wasm.js');
  wasm.setWasmPaths(path.join(nodeModules, '@tensorflow/tfjs-backend-wasm/dist') + path.sep);
  await tf.setBackend('wasm');
  await tf.ready();
  const modelDir = path.join(nodeModules, '@vladmandic/face-api/model');
  if (wantEmotion) await faceapi.nets.faceExpressionNet.loadFromDisk(modelDir);
  if (wantAgeGender) await faceapi.nets.ageGenderNet.loadFromDisk(modelDir);

  const crops = fs.readFileSync(cropsPath);
  if (crops.length !== n * size * size * 3) throw new Error(`expected ${n * size * size * 3} bytes, got ${crops.length}`);
  const order = ['neutral', 'happy', 'sad', 'angry', 'fearful', 'disgusted', 'surprised'];
  const out = new Float32Array(n * 9);
  const batch = 32;
  const t0 = Date.now();
  for (let start = 0; start < n; start += batch) {
    const count = Math.min(batch, n - start);
    const tensors = [];
    for (let i = 0; i < count; i += 1) {
      const off = (start + i) * size * size * 3;
      tensors.push(tf.tensor3d(new Uint8Array(crops.buffer, crops.byteOffset + off, size * size * 3), [size, size, 3], 'int32'));
    }
    const asList = (x) => (Array.isArray(x) ? x : [x]);
    const expressions = wantEmotion ? asList(await faceapi.nets.faceExpressionNet.predictExpressions(tensors)) : null;
    const ageGender = wantAgeGender ? asList(await faceapi.nets.ageGenderNet.predictAgeAndGender(tensors)) : null;
    for (let i = 0; i < count; i += 1) {
      const row = (start + i) * 9;
      if (expressions) order.forEach((name, k) => { out[row + k] = expressions[i][name]; });
      if (ageGender) {
        const ag = ageGender[i];
        out[row + 7] = ag.age;
        out[row + 8] = ag.gender === 'female' ? ag.genderProbability : 1 - ag.genderProbability;
      }
    }
    tensors.forEach((t) => t.dispose());
    const done = start + count;
    process.stderr.write(`\r${done}/${n} faces, ${(done / ((Date.now() - t0) / 1000)).toFixed(0)}/s`);
  }
  process.stderr.write('\n');
  fs.writeFileSync(outPath, Buffer.from(out.buffer));
}

main().catch((err) => { console.error(err); process.exit(1); });
