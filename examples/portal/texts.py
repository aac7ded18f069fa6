"""The portal's page texts in Korean and English: a dict per language is all a sample needs."""

from __future__ import annotations

from collections.abc import Mapping

LANGUAGES = ("ko", "en")  # the first is the default
DEFAULT_LANGUAGE = LANGUAGES[0]

TEXTS: Mapping[str, Mapping[str, str]] = {
    "ko": {
        "portal": "경기 민원포털",
        "other_language": "English",
        "welcome": "경기도 민원을 한곳에서 신청하세요.",
        "sign_in": "경기도 통합 로그인으로 로그인",
        "sign_out": "로그아웃",
        "sign_out_everywhere": "모든 기기에서 로그아웃 (경기도 계정)",
        "signed_in_as": "로그인됨",
        "how_signed_in": "로그인 방법",
        "name": "이름",
        "sub": "식별자 (sub)",
        "acr": "인증 수준 (acr)",
        "amr": "인증 수단 (amr)",
        "auth_time": "인증 시각 (auth_time)",
        "permit_link": "건축 인허가 신청",
        "permit_title": "건축 인허가 신청",
        "permit_intro": "건축 인허가는 패스키로 5분 안에 로그인해야 신청할 수 있습니다. "
        "필요하면 다시 인증하도록 안내합니다.",
        "permit_resume": "본인 인증이 끝났습니다. 신청 내용을 확인하고 제출하세요.",
        "address": "건축물 주소",
        "purpose": "용도",
        "purpose_house": "단독주택",
        "purpose_shop": "근린생활시설",
        "purpose_warehouse": "창고",
        "submit": "신청서 제출",
        "permit_done_title": "신청이 접수되었습니다",
        "permit_number": "접수번호",
        "home": "처음으로",
        "error_title": "요청을 처리하지 못했습니다",
        "error_form": "입력을 확인하세요: 주소와 용도를 모두 적어야 합니다.",
        "error_expired": "양식이 만료되었습니다. 다시 시도하세요.",
        "error_sign_in": "로그인하지 못했습니다. 다시 시도하세요.",
        "error_weak": "이 신청에는 패스키 로그인이 필요합니다. 패스키로 다시 로그인하세요.",
        "error_idp": "경기도 통합 로그인에 연결하지 못했습니다. 잠시 후 다시 시도하세요.",
        "error_api": "신청을 접수하지 못했습니다. 잠시 후 다시 시도하세요.",
        "signed_out": "로그아웃했습니다.",
    },
    "en": {
        "portal": "Gyeonggi Civil Complaints Portal",
        "other_language": "한국어",
        "welcome": "Apply for Gyeonggi-do's civil services in one place.",
        "sign_in": "Sign in with Gyeonggi-do sign-in",
        "sign_out": "Sign out",
        "sign_out_everywhere": "Sign out everywhere (Gyeonggi-do account)",
        "signed_in_as": "Signed in",
        "how_signed_in": "How you signed in",
        "name": "Name",
        "sub": "Identifier (sub)",
        "acr": "Assurance level (acr)",
        "amr": "Methods (amr)",
        "auth_time": "Signed in at (auth_time)",
        "permit_link": "Apply for a building permit",
        "permit_title": "Building permit application",
        "permit_intro": "A building permit needs a passkey sign-in within the last 5 minutes; you will be asked to "
        "sign in again if needed.",
        "permit_resume": "You have signed in again. Check your application and submit it.",
        "address": "Building address",
        "purpose": "Use",
        "purpose_house": "Detached house",
        "purpose_shop": "Neighbourhood facility",
        "purpose_warehouse": "Warehouse",
        "submit": "Submit the application",
        "permit_done_title": "Your application was received",
        "permit_number": "Application number",
        "home": "Home",
        "error_title": "The request could not be completed",
        "error_form": "Check your input: both the address and the use are needed.",
        "error_expired": "This form has expired. Please try again.",
        "error_sign_in": "The sign-in did not complete. Please try again.",
        "error_weak": "This application needs a passkey sign-in. Please sign in again with your passkey.",
        "error_idp": "Gyeonggi-do sign-in cannot be reached. Please try again shortly.",
        "error_api": "The application could not be received. Please try again shortly.",
        "signed_out": "You have signed out.",
    },
}

PURPOSES = ("house", "shop", "warehouse")
