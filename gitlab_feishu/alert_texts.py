"""The words of admin alert cards (alerts.py), in each card language."""
from .feishu_errors import WRONG_CREDENTIALS

RETRY_HINT = {"zh": "修复后运行 `python webhook_server.py --retry-failed` 重新发送失败的通知。",
              "en": "After fixing it, run `python webhook_server.py --retry-failed` to send the failed notifications."}
TEXTS = {   # kind -> lang -> (title, what is wrong, what to do); {placeholders} are escaped before use
    "unknown_email": {
        "zh": ("飞书中找不到 {recipient}",
               "{file} 中的这个邮箱在飞书中查不到，或此人不在应用的通讯录权限范围内，通知没有发给他。",
               "确认这是此人的飞书账号邮箱；或在飞书开发者后台「权限管理」中把通讯录权限范围扩大到包含此人，"
               "并发布新版本；也可以在 {file} 中改写此人的 open_id（ou_...）。"),
        "en": ("{recipient} not found in Feishu",
               "This email in {file} is unknown to Feishu or outside the app's contact scope, so the "
               "notification did not reach them.",
               "Check that it is the person's Feishu login email, or widen the app's contact data scope under "
               "Permissions & Scopes (权限管理) in the Feishu developer console and publish a new version, or put "
               "the person's open_id (ou_...) in {file}."),
    },
    "availability": {
        "zh": ("{recipient} 不在应用的可用范围内",
               "飞书拒绝给此人发消息（230013）：此人不在应用的可用范围内，或已离职。",
               "在飞书开发者后台「可用范围」中加入此人，并发布新版本。"),
        "en": ("{recipient} is outside the app's availability range",
               "Feishu refused to message this person (230013): they are outside the app's availability range, "
               "or have left the company.",
               "Add them under Availability (可用范围) in the Feishu developer console and publish a new version."),
    },
    "permission": {
        "zh": ("飞书应用缺少权限 {scopes_zh}",
               "飞书拒绝了调用（99991672）：应用没有 {scopes_zh} 权限，通知发不出去。",
               "在飞书开发者后台「权限管理」中开通 {scopes_zh}，并发布新版本。"),
        "en": ("The Feishu app lacks the permission {scopes}",
               "Feishu refused the call (99991672): the app lacks {scopes}, so notifications cannot go out.",
               "Add {scopes} under Permissions & Scopes (权限管理) in the Feishu developer console and publish a "
               "new version."),
    },
    "card": {
        "zh": ("飞书拒收了通知卡片（{code}）",
               "飞书拒收了一张通知卡片：卡片格式有误或超过 30 KB；原样重发也会被拒收。",
               "这通常是本服务的缺陷：请把下面的错误信息（含 log id）和项目名报告给维护者。"),
        "en": ("Feishu refused a notification card ({code})",
               "Feishu refused a notification card: bad card JSON or over 30 KB; sent again as it is, it would be "
               "refused again.",
               "This is usually a bug in this service: report the error below (with its log id) and the project "
               "to its maintainers."),
    },
    "chat": {
        "zh": ("群机器人发送失败（{code}）",
               "飞书拒绝了发往群聊 {recipient} 的通知，重试也无济于事。",
               "在该群的「设置 → 群机器人」中查看这个自定义机器人：是否已被移除，是否开启了签名校验、自定义关键词"
               "或 IP 白名单（见下方错误信息）；再在 owners.json 中改正它的 webhook 地址或 secret。"),
        "en": ("A group chat post failed ({code})",
               "Feishu refused the notification to the group chat {recipient}; retrying will not help.",
               "In the group's Settings > Bots (群机器人), look at this custom bot: was it removed, or are signature "
               "verification, custom keywords or an IP allow-list turned on (see the error below)? Then correct its "
               "webhook URL or secret in owners.json."),
    },
    "expired": {
        "zh": ("通知重试 24 小时后仍未送达",
               "飞书长时间不可用或一直限流，通知在重试期限内没有发出，已标记为失败。",
               "确认飞书已恢复、服务能访问飞书开放平台。"),
        "en": ("A notification was not delivered in 24 hours of retries",
               "Feishu was unreachable or rate-limiting for a long time; the notification is marked failed.",
               "Check that Feishu is back and that this service can reach the Feishu Open Platform."),
    },
    "app": {
        "zh": ("飞书应用无法发送通知（{code}）",
               "飞书拒绝了本服务的调用（{code}）：所有通知都受影响，不只是某一个人。",
               "{action_zh}"),
        "en": ("The Feishu app cannot send notifications ({code})",
               "Feishu refused this service's call ({code}): every notification is affected, not one person.",
               "{action_en}"),
    },
    "person": {
        "zh": ("飞书不给 {recipient} 发消息（{code}）",
               "飞书拒绝了发给 {recipient} 的通知（{code}），重试也无济于事。",
               "{action_zh}"),
        "en": ("Feishu will not message {recipient} ({code})",
               "Feishu refused the notification to {recipient} ({code}); retrying will not help.",
               "{action_en}"),
    },
    "other": {
        "zh": ("通知发送失败（{code}）",
               "飞书拒绝了发给 {recipient} 的通知，重试也无济于事。",
               "按下方错误信息中的提示处理。"),
        "en": ("A notification failed ({code})",
               "Feishu refused the notification to {recipient}; retrying will not help.",
               "Follow the hint in the error below."),
    },
    "backlog": {
        "zh": ("待发送通知积压：{queued} 条",
               "超过 {minutes} 分钟以来，待发送的通知一直多于 {threshold} 条："
               "飞书可能不可用、在限流，或应用凭证失效。",
               "查看服务日志和 `python webhook_server.py --outbox` 中的错误；"
               "在飞书开发者后台确认应用已启用、凭证有效。"),
        "en": ("Notification backlog: {queued} queued",
               "For more than {minutes} minutes over {threshold} notifications have been waiting: Feishu may be "
               "down or rate-limiting, or the app's credentials stopped working.",
               "Look at the service log and `python webhook_server.py --outbox`; in the Feishu developer console, "
               "check that the app is enabled and its credentials are valid."),
    },
}
LABELS = {
    "zh": {"problem": "问题", "action": "处理", "recipient": "收件人", "project": "项目", "error": "错误信息",
           "console": "打开飞书开发者后台", "summary": "GitLab 通知服务告警：{title}"},
    "en": {"problem": "Problem", "action": "What to do", "recipient": "Recipient", "project": "Project",
           "error": "Error", "console": "Open the Feishu developer console",
           "summary": "GitLab notifier alert: {title}"},
}

_CREDENTIALS = {"zh": "核对 .env 中的 FEISHU_APP_ID 和 FEISHU_APP_SECRET 与飞书开发者后台「凭证与基础信息」中的一致，"
                      "然后重启服务。",
                "en": "Check FEISHU_APP_ID and FEISHU_APP_SECRET in .env against Credentials & Basic Info "
                      "(凭证与基础信息) in the Feishu developer console, then restart the service."}
# What to do about a code that stops every notification (the "app" kind), per language.
APP_ACTIONS = {
    230006: {"zh": "在飞书开发者后台「应用能力」中启用「机器人」，并发布新版本。",
             "en": "Enable the Bot (机器人) under Features (应用能力) in the Feishu developer console and publish a "
                   "new version."},
    **{code: _CREDENTIALS for code in WRONG_CREDENTIALS},
    99991401: {"zh": "在飞书开发者后台「安全设置」的 IP 白名单中加入本服务器的出口 IP。",
               "en": "Add this server's outgoing IP to the IP allow-list under Security Settings (安全设置) in the "
                     "Feishu developer console."},
    99991403: {"zh": "本企业自建应用的 API 月调用额度已用完：请飞书管理员升级套餐。",
               "en": "The tenant's monthly API call quota for custom apps is used up: ask a Feishu admin to upgrade "
                     "the plan."},
    99991662: {"zh": "应用已停用：在飞书开发者后台启用应用，并发布新版本。",
               "en": "The app is disabled: enable it in the Feishu developer console and publish a new version."},
    99991201: {"zh": "飞书不认识这个接口地址：检查 .env 中的 FEISHU_BASE_URL（飞书为 https://open.feishu.cn，Lark 为 "
                     "https://open.larksuite.com，不带 /open-apis），然后重启服务。",
               "en": "Feishu does not know this API path: check FEISHU_BASE_URL in .env (https://open.feishu.cn, or "
                     "https://open.larksuite.com for Lark, without /open-apis), then restart the service."},
}
# What to do about a code that stops the notifications to one person (the "person" kind), per language.
PERSON_ACTIONS = {
    230053: {"zh": "此人关闭了本应用机器人的消息：请此人在飞书中打开与机器人的会话，重新开启接收消息。",
             "en": "They have stopped receiving this bot's messages: ask them to open the bot's chat in Feishu and "
                   "turn its messages back on."},
    230029: {"zh": "此人已离职：在 owners.json 或 users.json 中删除此人，或换成接手的同事。",
             "en": "They have left the company: remove them from owners.json or users.json, or name whoever took "
                   "over."},
    230035: {"zh": "飞书不允许本应用给此人发消息（被禁言、屏蔽或企业策略）：请此人或飞书管理员检查。",
             "en": "Feishu does not let this app message them (muted, blocked or a tenant policy): ask them or a "
                   "Feishu admin."},
    230038: {"zh": "此人属于另一个飞书企业，不能跨企业私聊：在 owners.json 或 users.json 中改用此人在本企业的账号。",
             "en": "They belong to another Feishu organisation, and cross-tenant DMs are not allowed: use their "
                   "account in this organisation in owners.json or users.json."},
}
