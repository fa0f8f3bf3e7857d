#!/usr/bin/python3
"""grounding_ref.py - reference outputs for tests/test_grounding.c and tests/test_chat.c.

Re-implements, from the facts of Vision-CAIR/MiniGPT-4 (HEAD d94738a), the text-side pieces the
C code mirrors, and runs them on the cases the C tests write:
  * demo_v2.py display text: re.sub(r'{<\\d+><\\d+><\\d+><\\d+>}|<delim>', '', s), then
    <p>(.*?)</p> -> the phrase (l.374-375; html.unescape is not applied, see docs/grounding.md);
  * demo_v2.py box extraction (extract_substrings l.81-91, visualize_all_bbox_together l.199-243)
    with image_width/height = the given W, H (no display resize);
  * eval_ref.py refer answers: strip <unk>/spaces, re.match of the 4-int pattern, ints / 100 * W;
  * coco_dataset.py region text: int(x / W * 100);
  * conversation.py Conversation.get_prompt (SINGLE), Chat.ask / upload_img / answer_prepare /
    answer, demo_v2.py history rule (l.479), get_context_emb's split at <ImageHere>;
  * post-processing: Chat.answer (l.190-191) and MiniGPTBase.generate (minigpt_base.py).

usage: grounding_ref.py REQUEST.json OUTPUT.json
"""
import json
import re
import sys
from collections import defaultdict

BOUNDING_BOX_SIZE = 100

# ---- demo_v2.py display text and boxes ----


def demo_clean(text):
    text = re.sub(r'{<\d+><\d+><\d+><\d+>}|<delim>', '', text)
    return re.sub(r'<p>(.*?)</p>', lambda m: m.group(1), text)


def extract_substrings(string):
    index = string.rfind('}')
    if index != -1:
        string = string[:index + 1]
    return re.findall(r'<p>(.*?)\}(?!<)', string)


def demo_entities(generation, width, height):
    """[(phrase, [[bins], [pixels]] per box)] as the demo builds its `entities`."""
    string_list = extract_substrings(generation)
    out = []
    if string_list:
        entities = defaultdict(list)
        for string in string_list:
            try:
                obj, string = string.split('</p>')
            except ValueError:
                continue
            for bbox_string in string.split('<delim>'):
                integers = re.findall(r'-?\d+', bbox_string)
                if len(integers) == 4:
                    x0, y0, x1, y1 = (int(v) for v in integers)
                    px = [x0 / BOUNDING_BOX_SIZE * width, y0 / BOUNDING_BOX_SIZE * height,
                          x1 / BOUNDING_BOX_SIZE * width, y1 / BOUNDING_BOX_SIZE * height]
                    entities[obj].append([[x0, y0, x1, y1], px])
        for k, v in entities.items():
            out.append([k, v])
    else:
        integers = re.findall(r'-?\d+', generation)
        if len(integers) == 4:
            x0, y0, x1, y1 = (int(v) for v in integers)
            px = [x0 / BOUNDING_BOX_SIZE * width, y0 / BOUNDING_BOX_SIZE * height,
                  x1 / BOUNDING_BOX_SIZE * width, y1 / BOUNDING_BOX_SIZE * height]
            out.append(['', [[[x0, y0, x1, y1], px]]])
    return out


def eval_refer(answer, width, height, res=100.0):
    answer = answer.replace("<unk>", "").replace(" ", "").strip()
    if not re.match(r'\{<\d{1,3}><\d{1,3}><\d{1,3}><\d{1,3}>\}', answer):
        return None
    pred = [int(num) for num in re.findall(r'\d+', answer)]
    pred[0] = pred[0] / res * width
    pred[1] = pred[1] / res * height
    pred[2] = pred[2] / res * width
    pred[3] = pred[3] / res * height
    return pred


def region_text(x1, y1, x2, y2, width, height):
    box = [x1 / width * 100, y1 / height * 100, x2 / width * 100, y2 / height * 100]
    box = [int(x) for x in box]
    return "{{<{}><{}><{}><{}>}}".format(*box)

# ---- conversation.py ----


class Conversation:
    def __init__(self, system, roles, sep):
        self.system, self.roles, self.sep = system, roles, sep
        self.messages = []

    def get_prompt(self):
        ret = self.system + self.sep
        for role, message in self.messages:
            if message:
                ret += role + message + self.sep
            else:
                ret += role
        return ret

    def append_message(self, role, message):
        self.messages.append([role, message])


SYSTEM4 = ("Give the following image: <Img>ImageContent</Img>. "
           "You will be able to see the image once I provide it to you. Please answer my questions.")
TEMPLATES = {
    0: (SYSTEM4, ("Human: ", "Assistant: "), "###"),      # CONV_VISION_Vicuna0
    1: (SYSTEM4, ("<s>[INST] ", " [/INST] "), ""),        # CONV_VISION_LLama2
    2: ("", ("<s>[INST] ", " [/INST]"), ""),              # CONV_VISION_minigptv2 / demo_v2 CONV_VISION
}


def post_minigpt4(text):
    text = text.split('###')[0]
    return text.split('Assistant:')[-1].strip()


def post_v2(text):
    text = text.split('</s>')[0]
    text = text.replace("<s>", "")
    return text.split(r'[/INST]')[-1].strip()


def run_conversation(tmpl, ops):
    system, roles, sep = TEMPLATES[tmpl]
    conv = Conversation(system, roles, sep)
    prompts = []
    for op in ops:
        if op[0] == 'image':                       # Chat.upload_img
            conv.append_message(conv.roles[0], "<Img><ImageHere></Img>")
        elif op[0] == 'ask':                       # Chat.ask
            text = op[1]
            if len(conv.messages) > 0 and conv.messages[-1][0] == conv.roles[0] \
                    and conv.messages[-1][1][-6:] == '</Img>':
                conv.messages[-1][1] = ' '.join([conv.messages[-1][1], text])
            else:
                conv.append_message(conv.roles[0], text)
        elif op[0] == 'prompt':                    # Chat.answer_prepare
            conv.append_message(conv.roles[1], None)
            prompt = conv.get_prompt()
            prompts.append({'prompt': prompt, 'segments': prompt.split('<ImageHere>')})
        elif op[0] == 'answer':
            if tmpl == 2:
                conv.messages[-1][1] = '</s>'      # demo_v2.py gradio_stream_answer
            else:
                conv.messages[-1][1] = post_minigpt4(op[1])  # Chat.answer
    return prompts


def main():
    with open(sys.argv[1], encoding='utf-8') as f:
        req = json.load(f)
    out = {}
    out['clean'] = [demo_clean(t) for t in req.get('clean', [])]
    out['entities'] = [demo_entities(t, w, h) for t, w, h in req.get('entities', [])]
    out['refer'] = [eval_refer(t, w, h) for t, w, h in req.get('refer', [])]
    out['region'] = [region_text(*r) for r in req.get('region', [])]
    out['conv'] = [run_conversation(c['template'], c['ops']) for c in req.get('conv', [])]
    out['post'] = [post_v2(t) if tmpl == 2 else post_minigpt4(t) for tmpl, t in req.get('post', [])]
    with open(sys.argv[2], 'w', encoding='utf-8') as f:
        json.dump(out, f)


if __name__ == '__main__':
    main()
