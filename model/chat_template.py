"""The GPT's chat template: plain strings, importable without torch (the settings read the default speakers)."""

# Speakers of a chat when a message names none: a pair who talk to each other often in the corpus (Othello), so
# the model has seen many exchanges between these headings.
USER_SPEAKER = "OTHELLO"
ASSISTANT_SPEAKER = "IAGO"

# The chat template (Jinja, as Hugging Face's `apply_chat_template` renders it): a conversation becomes a scene of a
# play, the form the model was trained on. Each message is a speech under its speaker's heading line (the
# message's `name`, else the role's default speaker), a system message (or developer, OpenAI's newer name for it) a
# stage direction in brackets, every speech followed by a blank line; the generation prompt is the assistant
# speaker's heading. A tool's answer is a stage direction too, `[get_weather answers: ...]` (its `name`, the function
# it answers, when the server knows it); an assistant's tool calls are stage directions at the end of its speech,
# `[Calls get_weather {"city": "Verona"}]`. `user_speaker` and `assistant_speaker` may be passed to override the
# defaults. Content is a string (the server joins text parts).
CHAT_TEMPLATE = (
    r"""
{%- set user = user_speaker | default('USER') -%}
{%- set assistant = assistant_speaker | default('ASSISTANT') -%}
{%- for message in messages -%}
    {%- if message.role in ('system', 'developer') -%}
        {{ '[' + message.content | trim + ']\n\n' }}
    {%- elif message.role == 'tool' -%}
        {{ '[' + (message.name or 'The tool') + ' answers: ' + message.content | trim + ']\n\n' }}
    {%- else -%}
        {%- set speaker = message.name or (user if message.role == 'user' else assistant) -%}
        {%- set said = namespace(lines=[(message.content or '') | trim]) -%}
        {%- for call in message.tool_calls or [] -%}
            {%- set args = call.function.arguments -%}
            {%- set args = args if args is string else args | tojson -%}
            {%- set said.lines = said.lines + ['[Calls ' + call.function.name + ' ' + args + ']'] -%}
        {%- endfor -%}
        {{ speaker | upper + '.\n' + said.lines | select | join('\n') + '\n\n' }}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ assistant | upper + '.\n' }}
{%- endif -%}
""".replace("'USER'", repr(USER_SPEAKER))
    .replace("'ASSISTANT'", repr(ASSISTANT_SPEAKER))
    .strip()
)
