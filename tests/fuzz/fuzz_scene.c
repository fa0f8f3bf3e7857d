/*
 * fuzz_scene.c - libFuzzer target for the --scene spec parser (world_opts_parse). Invariants: a
 * spec that parses formats to a canonical spec that parses again to the same options, and that
 * canonical spec is a fixed point of format; a spec that fails leaves a message starting with
 * "scene:".
 */
#include "world.h"

#include <stdlib.h>
#include <string.h>

/* libFuzzer entry point: one input = one spec (a NUL-terminated copy). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 4096) return 0;
    char *spec = malloc(size + 1);
    if (!spec) return 0;
    memcpy(spec, data, size);
    spec[size] = 0;
    world_opts a, b;
    char err[256] = "", buf[1024], buf2[1024];
    if (world_opts_parse(spec, &a, err, sizeof err) == MG_OK) {
        world_opts_format(&a, buf, sizeof buf);
        if (world_opts_parse(buf, &b, err, sizeof err) != MG_OK) abort();
        if (a.min_objects != b.min_objects || a.max_objects != b.max_objects || a.backgrounds != b.backgrounds ||
            a.tones != b.tones || a.colors != b.colors || a.shapes != b.shapes || a.sizes != b.sizes || a.vqa != b.vqa ||
            a.same != b.same)
            abort();
        world_opts_format(&b, buf2, sizeof buf2);
        if (strcmp(buf, buf2)) abort();
    } else if (strncmp(err, "scene:", 6)) {
        abort();
    }
    free(spec);
    return 0;
}
