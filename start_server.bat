@echo off
rem Start the GitLab -> Feishu notifier on Windows: double-click this file (or "Run as administrator").
rem The first run creates .venv, installs requirements.txt and creates .env from .env.example;
rem then every run starts the service: python webhook_server.py (with the .venv Python).
rem Keep this file ASCII with CRLF line endings: cmd reads a batch file in the console's code page.
setlocal
chcp 65001 >nul
cd /d "%~dp0" || goto :fail
set PYTHONUTF8=1
title GitLab - Feishu notifier
set "VENV_PY=.venv\Scripts\python.exe"

if exist "%VENV_PY%" goto :venv_ready
call :find_python || goto :fail
echo Creating the Python environment in .venv (first run only) ...
%PY% -m venv .venv || goto :venv_failed

:venv_ready
"%VENV_PY%" -c "import sys" >nul 2>&1 || goto :venv_broken
rem Install requirements.txt on the first run and again whenever it changed since the last install.
fc /b requirements.txt .venv\requirements.installed >nul 2>&1 && goto :requirements_ready
rem A .venv cut short (the window closed while it was made) has python.exe but no pip: ensurepip adds it
rem from the Python itself, without the network.
"%VENV_PY%" -m pip --version >nul 2>&1 || "%VENV_PY%" -m ensurepip --default-pip || goto :venv_unfinished
echo Installing requirements.txt into .venv ...
"%VENV_PY%" -m pip install --disable-pip-version-check -r requirements.txt || goto :pip_failed
copy /y requirements.txt .venv\requirements.installed >nul

:requirements_ready
if exist ".env" goto :start
copy ".env.example" ".env" >nul || goto :fail
echo.
echo Created .env from .env.example. Fill in FEISHU_APP_ID, FEISHU_APP_SECRET and GITLAB_WEBHOOK_SECRET,
echo save it, then close this window and double-click start_server.bat again.
echo Opening it in Notepad now: notepad .env
echo Until it is filled in, the service runs in dry-run: cards are written to the log, not sent.
echo.
start "" notepad ".env"

:start
".venv\Scripts\python.exe" webhook_server.py %*
if %errorlevel% neq 0 goto :stopped
exit /b 0

:find_python
rem The Microsoft Store's "python" placeholder fails this check too, so it counts as not installed.
py -3 -c "import sys; sys.exit(sys.version_info < (3, 10))" >nul 2>&1 && set "PY=py -3" && exit /b 0
python -c "import sys; sys.exit(sys.version_info < (3, 10))" >nul 2>&1 && set "PY=python" && exit /b 0
echo Python 3.10 or newer was not found (tried "py -3" and "python").
echo Install it from https://www.python.org/downloads/windows/ and, on the installer's first page,
echo tick "Add python.exe to PATH". Then close this window and double-click start_server.bat again.
exit /b 1

:venv_failed
echo Creating .venv failed (see the message above).
goto :fail

:venv_broken
echo The Python in .venv does not run (was Python moved, upgraded or uninstalled?).
echo Delete the .venv folder and double-click start_server.bat again.
goto :fail

:venv_unfinished
echo .venv is unfinished: it has no pip (was the window closed while it was being created?).
echo Delete the .venv folder and double-click start_server.bat again.
goto :fail

:pip_failed
echo.
echo Installing requirements.txt failed (see the messages above).
echo If PyPI is slow or out of reach, use a mirror, then double-click start_server.bat again:
echo   .venv\Scripts\python -m pip config --user set global.index-url https://pypi.tuna.tsinghua.edu.cn/simple
echo Behind a proxy: set HTTPS_PROXY=http://proxy-host:port in the system environment (see README).
goto :fail

:stopped
echo.
echo The service stopped with an error (see the message above). Fix it, then run start_server.bat again.
pause
exit /b 1

:fail
echo.
echo start_server.bat stopped because of the error above.
pause
exit /b 1
