/*
 * world_shim.c - the synthetic world as a small shared library for scripts/research/shape_torch.py
 * (build line there). pw_gen renders scene `idx` of set `seed` within a --scene spec and returns
 * its pixels, its per-patch labels (world_patch_labels) and its objects. Research only.
 */
#include "world.h"
#include <string.h>
/* returns number of objects, or -1 on error. rgb: size*size*3, labels: (size/patch)^2,
   objs: up to 6 x (shape,color,size,x0,y0,x1,y1) */
int pw_gen(unsigned long long seed, unsigned long long idx, int size, int patch, const char *spec,
           int held_out, unsigned char *rgb, int *labels, int *objs) {
    world_opts o; char err[256];
    if (world_opts_parse(spec, &o, err, sizeof err) != MG_OK) return -1;
    world_scene sc;
    if (world_scene_generate_opts(&sc, seed, idx, size, held_out, &o, err, sizeof err) != MG_OK) return -1;
    memcpy(rgb, sc.image.rgb, (size_t)size * size * 3);
    int n = (size / patch) * (size / patch);
    int32_t lab[4096];
    if (world_patch_labels(&sc, patch, lab, err, sizeof err) != MG_OK) { world_scene_free(&sc); return -1; }
    for (int i = 0; i < n; i++) labels[i] = lab[i];
    for (int i = 0; i < sc.n_objects; i++) {
        world_object *ob = &sc.objects[i];
        int *d = objs + 7 * i;
        d[0] = ob->shape; d[1] = ob->color; d[2] = ob->size; d[3] = ob->x0; d[4] = ob->y0; d[5] = ob->x1; d[6] = ob->y1;
    }
    int k = sc.n_objects;
    world_scene_free(&sc);
    return k;
}
#include <stdlib.h>
void mg_image_free(mg_image *img) { if (img) { free(img->rgb); img->rgb = NULL; } }
mg_status mg_region_text(double x1, double y1, double x2, double y2, int w, int h, char *buf, size_t len, char *e, size_t el) { (void)e; (void)el;
    (void)x1; (void)y1; (void)x2; (void)y2; (void)w; (void)h; if (len) buf[0] = 0; return MG_OK;
}
