/* The native library over GGUF blocks, built on first use by arrowengine/runtime/native/gguf.py: the block
 * products and exact dequantization (gguf_blocks.c), a Llama decoder layer for one new token per row
 * (llama_layer.c) and BERT encoder layers (bert_layer.c), one shared object called through ctypes. */
#include "gguf_blocks.c"
#include "llama_layer.c"
#include "bert_layer.c"
