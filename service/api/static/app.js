// tinyserve playground. Plain browser JavaScript modules with no library and no build step: the page needs
// nothing but this server, so it works on a machine without internet access. One module a view; api.js and ui.js
// hold what the views share.

import { setUpKeyForm } from "./api.js";
import * as attention from "./attention.js";
import * as complete from "./complete.js";
import * as constrained from "./constrained.js";
import * as embeddings from "./embeddings.js";
import * as network from "./network.js";
import * as pixels from "./pixels.js";
import * as tokenizer from "./tokenizer.js";

setUpKeyForm();
// The network view listens for the pad's answers, so it starts before the pad sends its first.
for (const view of [complete, tokenizer, network, pixels, attention, embeddings, constrained]) view.start();
