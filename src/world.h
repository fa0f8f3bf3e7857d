/*
 * world.h - the synthetic grounded world: scenes of 1..6 coloured shapes on plain, gradient,
 * noisy or cluttered backgrounds, rendered anti-aliased (4x4 supersampling) and deterministic
 * from a seed on every machine (own PRNG and sine, IEEE basic operations only), with exact
 * ground truth (tight pixel boxes of the visible samples) and task examples in MiniGPT-v2's
 * formats ([caption], [grounding], [detection], [refer], [identify], [vqa], untagged).
 * The trainer takes examples straight from memory; `minigpt synth` writes them to files.
 * See docs/synth.md.
 */
#ifndef MG_WORLD_H
#define MG_WORLD_H

#include "internal.h"

#define WORLD_MAX_OBJECTS 6
#define WORLD_MAX_EXAMPLES 24
#define WORLD_TEXT_MAX 1536

enum { WORLD_CIRCLE, WORLD_SQUARE, WORLD_TRIANGLE, WORLD_STAR, WORLD_DIAMOND, WORLD_HEXAGON,
       WORLD_PENTAGON, WORLD_CROSS, WORLD_N_SHAPES };
enum { WORLD_N_COLORS = 11 };
enum { WORLD_SMALL, WORLD_MEDIUM, WORLD_LARGE, WORLD_N_SIZES };
enum { WORLD_BG_PLAIN, WORLD_BG_GRADIENT, WORLD_BG_NOISE, WORLD_BG_CLUTTER, WORLD_N_BACKGROUNDS };

typedef struct {
    int shape, color, size;  /* indices into the name tables below */
    double cx, cy, r, angle; /* layout in pixels / radians (the shape fits in the circle cx,cy,r) */
    int x0, y0, x1, y1;      /* tight box of the pixels holding a visible sample, inclusive */
    int n_samples;           /* 4x4 samples the shape covers */
    int n_visible;           /* of those, not hidden by a later object */
} world_object;

typedef struct {
    int w, h;
    int background;             /* WORLD_BG_* */
    uint8_t bg_rgb[2][3];       /* base colour; gradient: from [0] (top-left) to [1] */
    int n_objects;
    world_object objects[WORLD_MAX_OBJECTS]; /* in drawing order (later ones on top) */
    uint64_t seed;              /* this scene's own seed (from the set seed and the index) */
    unsigned vqa_kinds;         /* [vqa] question kinds its examples may ask (world_opts.vqa; 0: all) */
    mg_image image;             /* the rendered pixels, owned by the scene */
    uint8_t *owners;            /* which object each anti-aliasing sample shows (4 x 4 per pixel, 0xFF:
                                 * background), owned by the scene: world_patch_labels and
                                 * world_patch_masks read it (the objects must not be changed) */
} world_scene;

typedef struct {
    mg_task task;                       /* MG_TASK_NONE: the untagged "Describe this image." */
    char instruction[WORLD_TEXT_MAX];   /* what the user types, e.g. "[refer] where is the red star ?" */
    char answer[WORLD_TEXT_MAX];        /* the target text */
    char query[256];    /* refer/identify: the expression; detection: the phrase; vqa: the question */
    int target;         /* the object a refer/identify/vqa example is about, else -1 */
    unsigned objects_mask;     /* detection: bit i set when object i answers the phrase */
    const char *question_type; /* vqa: "how many", "what color is the", ... (static), else NULL */
    const char *answer_type;   /* vqa: "number", "yes/no" or "other" (static), else NULL */
} world_example;

/* Classes of world_patch_labels: 0 background, 1 + color * WORLD_N_SHAPES + shape. */
#define WORLD_PATCH_CLASSES (1 + WORLD_N_COLORS * WORLD_N_SHAPES)
/* The shape-only labelling of the same cells: 0 background, 1 + shape. */
#define WORLD_PATCH_SHAPE_CLASSES (1 + WORLD_N_SHAPES)
/* The one-object world of the shipped demo model (models/demo.gguf: stage 11 of
 * scripts/train_demo.sh; its last stages add scenes of two and three objects; docs/DEMO_MODEL.md)
 * as a --scene spec: its held-out scenes are what the model tests ask about. */
#define WORLD_DEMO_SCENE "objects=1,bg=plain,shapes=circle+square+triangle+star+diamond+cross,sizes=medium+large"
/* Label of each patch x patch cell (row-major): the object covering most of the cell's samples
 * when it covers at least a quarter of them, else background. */
mg_status world_patch_labels(const world_scene *sc, int patch, int32_t *labels, char *err, size_t err_len);
/* Object mask of each patch x patch cell (row-major cells, each patch^2 pixels row-major): the
 * share of the pixel's anti-aliasing samples covered by any object, 0..1. */
mg_status world_patch_masks(const world_scene *sc, int patch, float *masks, char *err, size_t err_len);

/* Name tables (static strings); NULL when out of range. */
const char *world_shape_name(int shape);
const char *world_shape_plural(int shape);
const char *world_color_name(int color);
void world_color_rgb(int color, uint8_t rgb[3]);
const char *world_size_name(int size);
const char *world_background_name(int background);

/* Which scenes the generator may draw (a curriculum restricts the world; docs/synth.md). A mask
 * of 0 means "all"; with every field at 0 (or opts NULL) the stream is the full world. */
typedef struct {
    int min_objects, max_objects; /* 1..6 (0: 1 and 6) */
    unsigned backgrounds;         /* bit per WORLD_BG_* */
    unsigned tones;               /* bit per background tone (WORLD_N_TONES) */
    unsigned colors;              /* bit per colour */
    unsigned shapes;              /* bit per shape */
    unsigned sizes;               /* bit per size class */
    unsigned vqa;                 /* bit per WORLD_VQA_* question kind (0: all) */
    int same;                     /* 0-100: percent chance that an object after the first takes the
                                   * shape of an earlier one, and (drawn apart) its colour (0: never) */
} world_opts;

/* The kinds of [vqa] question (world_opts.vqa; scene key vqa=count+color+shape+where+yesno). */
enum { WORLD_VQA_COUNT, WORLD_VQA_COLOR, WORLD_VQA_SHAPE, WORLD_VQA_WHERE, WORLD_VQA_YESNO, WORLD_N_VQA };

enum { WORLD_N_TONES = 8 };

/* Parses "objects=1-2,bg=plain+gradient,tones=0+1,colors=red+blue,shapes=square,sizes=large,vqa=yesno,same=50"
 * (keys in any order, each optional; "all" or "" for everything). Unknown keys, names or ranges
 * fail with a message. vqa= does not change the scenes, only which [vqa] questions are asked;
 * same= makes repeated shapes and colours commoner (counting). */
mg_status world_opts_parse(const char *spec, world_opts *o, char *err, size_t err_len);
/* The canonical spec of o ("all" for the full world) into buf. */
void world_opts_format(const world_opts *o, char *buf, size_t len);

/* Generates and renders scene `index` of the set `seed` (size x size pixels, 64..4096).
 * held_out selects a disjoint stream of scenes for evaluation sets. On success *sc owns its image
 * (world_scene_free). Never fails on valid arguments except for memory. */
mg_status world_scene_generate(world_scene *sc, uint64_t seed, uint64_t index, int size, bool held_out,
                               char *err, size_t err_len);
/* The same within the restrictions of opts (NULL: none; then identical to the above). Fails when
 * the restrictions admit no scene (say, only white objects on the lightest tone). */
mg_status world_scene_generate_opts(world_scene *sc, uint64_t seed, uint64_t index, int size, bool held_out,
                                    const world_opts *opts, char *err, size_t err_len);
void world_scene_free(world_scene *sc);

/* Pixel box of object i as the half-open corners (x0, y0, x1+1, y1+1): the COCO box
 * [x, y, w, h] read as [x, y, x+w, y+h]. */
void world_object_box(const world_object *o, double box[4]);

/* Builds the examples of the tasks in task_mask (bit 1<<mg_task; bit 0 = untagged description)
 * into out (up to max). eval_style: the fixed instruction the official evaluation (or the demo)
 * uses instead of a random one from the training pool. *n_out receives the count. */
mg_status world_scene_examples(const world_scene *sc, unsigned task_mask, bool eval_style,
                               world_example *out, int max, int *n_out, char *err, size_t err_len);

/* Object mentions in free text: each shape word (singular or plural) directly preceded by a
 * colour word, optionally with one size word between ("two small red stars" -> red star).
 * Words are runs of ASCII letters, compared case-insensitively. Writes at most max pairs
 * (colour, shape), deduplicated, into out; returns how many were written. */
int world_mentions(const char *text, int out[][2], int max);

#endif
